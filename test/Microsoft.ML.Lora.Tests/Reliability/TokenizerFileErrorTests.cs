using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// A broken tokenizer file is a <see cref="ModelLoadException"/> that names the file and says what was expected,
/// never a bare JsonException, KeyNotFoundException ("The given key was not present in the dictionary") or
/// ArgumentOutOfRangeException from the parsing code.
/// </summary>
public sealed class TokenizerFileErrorTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static JsonObject Minimal() => new()
    {
        ["model"] = new JsonObject
        {
            ["type"] = "BPE",
            ["vocab"] = new JsonObject { ["a"] = 0, ["b"] = 1, ["ab"] = 2 },
            ["merges"] = new JsonArray("a b"),
        },
        ["added_tokens"] = new JsonArray(),
    };

    private string Folder(string name, Action<string> write)
    {
        string folder = _temp.File(name);
        Directory.CreateDirectory(folder);
        write(folder);
        return folder;
    }

    private ModelLoadException Fails(string folder, string file, string expected)
    {
        var act = () => HfTokenizer.Load(folder);
        var e = act.Should().Throw<ModelLoadException>().Which;
        string path = Path.Combine(folder, file);
        e.FilePath.Should().Be(path);
        e.Message.Should().StartWith($"Cannot read the tokenizer file '{path}': ").And.Match(expected);
        e.Message.Should().NotContain("   at ");
        return e;
    }

    [Fact]
    public void Minimal_tokenizer_json_loads()
    {
        string folder = Folder("ok", f => File.WriteAllText(Path.Combine(f, "tokenizer.json"), Minimal().ToJsonString()));
        HfTokenizer.Load(folder).Encode("ab", false).Should().Equal(2);
    }

    [Fact]
    public void A_truncated_tokenizer_json_names_the_file_and_says_it_ends_early()
    {
        string text = File.ReadAllText(Path.Combine(Fixtures.Tokenizer("gpt2"), "tokenizer.json"));
        string folder = Folder("truncated", f => File.WriteAllText(Path.Combine(f, "tokenizer.json"), text[..(text.Length / 2)]));
        Fails(folder, "tokenizer.json", "*is not valid JSON (line *, byte *: the file ends early, is it truncated?)*expected a tokenizer.json written by Hugging Face tokenizers.");
    }

    [Theory]
    [InlineData("no-model", "*the document has no \"model\".")]
    [InlineData("vocab-array", "*\"vocab\" in \"model\" is a JSON Array, expected an Object.")]
    [InlineData("vocab-id-string", "*the id of \"b\" in model.vocab is \"1\", expected an integer 0 or above.")]
    [InlineData("vocab-id-negative", "*the id of \"b\" in model.vocab is -1, expected an integer 0 or above.")]
    [InlineData("merge-one-token", "*model.merges[0] is \"ab\", expected \"a b\" (two tokens and one space) or [\"a\", \"b\"].")]
    [InlineData("merge-three-tokens", "*model.merges[0] is \"a b c\", expected*")]
    [InlineData("merge-pair-of-three", "*model.merges[0] is [\"a\",\"b\",\"c\"], expected*")]
    [InlineData("merge-out-of-vocab", "*model.merges[0] (\"a c\") uses \"c\", which is not in the vocabulary.")]
    [InlineData("merges-missing", "*\"model\" has no \"merges\".")]
    [InlineData("added-without-id", "*an entry of added_tokens has no \"id\".")]
    [InlineData("template-without-special-tokens", "*a member is missing or of the wrong kind*")]
    [InlineData("root-array", "*the document is a JSON Array, expected an object with a \"model\".")]
    public void A_malformed_tokenizer_json_names_the_file_and_what_was_expected(string fault, string expected)
    {
        var json = Minimal();
        var model = json["model"]!.AsObject();
        JsonNode root = json;
        switch (fault)
        {
            case "no-model": json.Remove("model"); break;
            case "vocab-array": model["vocab"] = new JsonArray("a", "b"); break;
            case "vocab-id-string": model["vocab"]!["b"] = "1"; break;
            case "vocab-id-negative": model["vocab"]!["b"] = -1; break;
            case "merge-one-token": model["merges"] = new JsonArray("ab"); break;
            case "merge-three-tokens": model["merges"] = new JsonArray("a b c"); break;
            case "merge-pair-of-three": model["merges"] = new JsonArray(new JsonArray("a", "b", "c")); break;
            case "merge-out-of-vocab": model["merges"] = new JsonArray("a c"); break;
            case "merges-missing": model.Remove("merges"); break;
            case "added-without-id": json["added_tokens"] = new JsonArray(new JsonObject { ["content"] = "<s>", ["special"] = true }); break;
            case "template-without-special-tokens":
                json["post_processor"] = new JsonObject { ["type"] = "TemplateProcessing", ["single"] = new JsonArray() };
                break;
            case "root-array": root = new JsonArray(json.DeepClone()); break;
        }
        string folder = Folder(fault, f => File.WriteAllText(Path.Combine(f, "tokenizer.json"), root.ToJsonString()));
        Fails(folder, "tokenizer.json", expected);
    }

    [Fact]
    public void An_unknown_model_type_names_the_file_and_the_supported_one()
    {
        var json = Minimal();
        json["model"]!["type"] = "WordPiece";
        string folder = Folder("wordpiece", f => File.WriteAllText(Path.Combine(f, "tokenizer.json"), json.ToJsonString()));
        var act = () => HfTokenizer.Load(folder);
        act.Should().Throw<NotSupportedException>().WithMessage($"Unsupported model 'WordPiece' in '{Path.Combine(folder, "tokenizer.json")}': only BPE models are supported.");
    }

    [Fact]
    public void A_truncated_tokenizer_config_json_is_named()
    {
        string folder = Folder("config", f =>
        {
            File.WriteAllText(Path.Combine(f, "tokenizer.json"), Minimal().ToJsonString());
            File.WriteAllText(Path.Combine(f, "tokenizer_config.json"), "{\"eos_token\": \"<|endo");
        });
        Fails(folder, "tokenizer_config.json", "*is not valid JSON*expected a JSON object of tokenizer settings.");
    }

    [Theory]
    [InlineData("vocab.json", "{\"a\": 0, \"b\": 1, \"ab\"", "*is not valid JSON*expected a JSON object of token → id (an integer).")]
    [InlineData("vocab.json", "{\"a\": 0, \"b\": \"one\", \"ab\": 2}", "*is not valid JSON*expected a JSON object of token → id (an integer).")]
    [InlineData("vocab.json", "{\"a\": 0, \"b\": -4, \"ab\": 2}", "*the id of \"b\" is -4, expected 0 or above.")]
    [InlineData("merges.txt", "#version: 0.2\na b\nab\n", "*line 3 is \"ab\", expected two tokens separated by one space.")]
    [InlineData("merges.txt", "#version: 0.2\nb c\n", "*line 2 (\"b c\") uses \"c\", which is not in the vocabulary.")]
    public void Broken_vocab_json_or_merges_txt_is_named_with_the_line(string broken, string content, string expected)
    {
        string folder = Folder("gpt2-style-" + Math.Abs(content.GetHashCode()), f =>
        {
            File.WriteAllText(Path.Combine(f, "vocab.json"), "{\"a\": 0, \"b\": 1, \"ab\": 2}");
            File.WriteAllText(Path.Combine(f, "merges.txt"), "#version: 0.2\na b\n");
            File.WriteAllText(Path.Combine(f, broken), content);
        });
        Fails(folder, broken, expected);
    }
}
