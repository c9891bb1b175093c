using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// Refuses a tokenizer with more ids than the model has embedding rows, before any weight is read. transformers
/// accepts such a pair and fails at the embedding lookup of the first id ≥ vocab_size ("index out of range in self"),
/// in the middle of training or generation; the usual cause is tokens added to the tokenizer without
/// <c>resize_token_embeddings</c>. Here it fails when the tokenizer is opened, naming both files and both sizes.
/// </summary>
internal static class TokenizerVocabularyCheck
{
    /// <summary>
    /// Throws <see cref="InvalidDataException"/> when <paramref name="tokenizer"/> (vocabulary and added tokens,
    /// <c>len(tokenizer)</c>) has more ids than <c>vocab_size</c> of <paramref name="folder"/>'s config.json. A folder
    /// without config.json or without a top-level vocab_size is not checked here (the model loader reports it).
    /// </summary>
    public static void Check(string folder, HfTokenizer tokenizer)
    {
        string configPath = Path.Combine(folder, "config.json");
        if (!File.Exists(configPath)) return;
        long vocabSize;
        try
        {
            if (JsonNode.Parse(File.ReadAllBytes(configPath)) is not JsonObject config
                || config["vocab_size"] is not JsonValue value || !value.TryGetValue(out vocabSize)) return;
        }
        catch (JsonException) { return; } // the model loader names an unreadable config.json
        if (tokenizer.VocabSize <= vocabSize) return;
        string tokenizerFiles = File.Exists(Path.Combine(folder, "tokenizer.json"))
            ? $"'{Path.Combine(folder, "tokenizer.json")}'"
            : $"'{Path.Combine(folder, "vocab.json")}' and '{Path.Combine(folder, "merges.txt")}'";
        throw new InvalidDataException(
            $"The tokenizer in {tokenizerFiles} has {tokenizer.VocabSize} token ids (vocabulary and added tokens, highest id {tokenizer.VocabSize - 1}) " +
            $"but the model in '{configPath}' has vocab_size {vocabSize}: ids {vocabSize} and above have no embedding row. " +
            "Use the tokenizer the model was saved with, or resize the model's token embeddings (transformers' resize_token_embeddings) and save it again.");
    }
}
