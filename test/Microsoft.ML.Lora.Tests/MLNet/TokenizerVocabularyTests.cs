using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>
/// A tokenizer with more ids than the model's vocab_size (tokens added without resizing the embeddings) is refused
/// when the tokenizer is opened, before the weights are read: the weights file here is garbage, so an error about it
/// would mean they were read first.
/// </summary>
public sealed class TokenizerVocabularyTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "mllora-vocab-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    /// <summary>A tiny model (vocab_size 257) whose tokenizer.json gets added tokens up to id <paramref name="highestId"/>; weights replaced by garbage.</summary>
    private string Folder(int highestId)
    {
        string folder = TinyBaseModel.Create(Path.Combine(_root, "tiny-" + highestId), "bloom", hiddenSize: 16, layers: 1, heads: 2, seed: 1);
        string path = Path.Combine(folder, "tokenizer.json");
        var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        var added = json["added_tokens"]!.AsArray();
        foreach (int id in new[] { TinyBaseModel.VocabSize, highestId }.Distinct())
            added.Add(new JsonObject
            {
                ["id"] = id, ["content"] = $"<|tag{id}|>", ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
                ["normalized"] = false, ["special"] = false,
            });
        File.WriteAllText(path, json.ToJsonString());
        File.WriteAllBytes(Path.Combine(folder, "model.safetensors"), Enumerable.Repeat((byte)0x5A, 4096).ToArray());
        return folder;
    }

    [Fact]
    public void Fit_refuses_a_tokenizer_larger_than_vocab_size_naming_both_files_and_sizes_before_reading_the_weights()
    {
        string folder = Folder(highestId: 299);
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new Row { Prompt = "a", Completion = "b" } });

        var fit = () => ml.Lora().CausalLm(folder).Fit(data);

        fit.Should().Throw<InvalidDataException>().WithMessage(
            $"The tokenizer in '{Path.Combine(folder, "tokenizer.json")}' has 300 token ids (vocabulary and added tokens, highest id 299) " +
            $"but the model in '{Path.Combine(folder, "config.json")}' has vocab_size 257: ids 257 and above have no embedding row.*resize_token_embeddings*");
    }

    [Fact]
    public void The_Tokenize_step_and_LoadAdapter_refuse_it_too()
    {
        string folder = Folder(highestId: TinyBaseModel.VocabSize);
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new Row { Prompt = "a", Completion = "b" } });
        var tokenize = () => ml.Lora().Tokenize(folder, "Ids", "Prompt").Fit(data);
        tokenize.Should().Throw<InvalidDataException>().WithMessage("*has 258 token ids*vocab_size 257*");

        string adapter = Path.Combine(_root, "adapter");
        Directory.CreateDirectory(adapter);
        var load = () => ml.Lora().LoadAdapter(adapter, new LoraCausalLmOptions { BaseModelFolder = folder });
        load.Should().Throw<InvalidDataException>().WithMessage("*has 258 token ids*vocab_size 257*");
    }
}
