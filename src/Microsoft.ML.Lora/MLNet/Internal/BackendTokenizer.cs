using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>What the TorchSharp backend needs from the base model's tokenizer.</summary>
internal interface IBackendTokenizer
{
    /// <summary>Token ids of <paramref name="text"/>; <paramref name="addSpecialTokens"/> adds what the model's post-processor adds (BOS).</summary>
    int[] Encode(string text, bool addSpecialTokens);

    /// <summary>Text of <paramref name="ids"/>, special tokens (EOS, padding) left out.</summary>
    string Decode(IReadOnlyList<int> ids);

    /// <summary>Id of the end-of-sequence token, when the tokenizer names one.</summary>
    int? EosId { get; }
}

/// <summary>Opens the tokenizer of a base model folder with <see cref="HfTokenizer"/> (tokenizer.json, or vocab.json + merges.txt).</summary>
internal static class BackendTokenizer
{
    /// <summary>The tokenizer of <paramref name="folder"/>, refused when it has more ids than the model's vocab_size (<see cref="TokenizerVocabularyCheck"/>).</summary>
    public static IBackendTokenizer Load(string folder)
    {
        var tokenizer = HfTokenizer.Load(folder);
        TokenizerVocabularyCheck.Check(folder, tokenizer);
        return new HfBackendTokenizer(tokenizer);
    }

    private sealed class HfBackendTokenizer(HfTokenizer tokenizer) : IBackendTokenizer
    {
        public int? EosId => tokenizer.EosId;

        public int[] Encode(string text, bool addSpecialTokens) => tokenizer.Encode(text, addSpecialTokens);

        public string Decode(IReadOnlyList<int> ids) => tokenizer.Decode(ids, skipSpecialTokens: true);
    }
}
