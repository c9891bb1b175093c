using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// A tokenizer.json whose Split pattern backtracks catastrophically (its time doubles per letter) fails Encode
/// within seconds, naming the file and the pattern, instead of running for minutes.
/// </summary>
public sealed class RegexTimeoutTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private string WriteTokenizer(JsonObject preTokenizer)
    {
        var root = new JsonObject
        {
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = new JsonObject { ["a"] = 0, ["b"] = 1 }, ["merges"] = new JsonArray() },
            ["added_tokens"] = new JsonArray(),
            ["pre_tokenizer"] = preTokenizer,
        };
        File.WriteAllText(_temp.File("tokenizer.json"), root.ToJsonString());
        return _temp.File("tokenizer.json");
    }

    [Fact]
    public void A_pathological_Split_pattern_fails_within_seconds_naming_file_and_pattern()
    {
        string path = WriteTokenizer(new JsonObject
        {
            ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = "(a|aa)+$" }, ["behavior"] = "Isolated", ["invert"] = false,
        });
        var tokenizer = HfTokenizer.Load(_temp.Path);
        var clock = Stopwatch.StartNew();

        var act = () => tokenizer.Encode(new string('a', 60) + "b");

        act.Should().Throw<InvalidDataException>().Which.Message.Should()
            .Be($"'{path}': the Split pre-tokenizer's pattern \"(a|aa)\u002B$\" took more than 2 s on a text of 61 characters (catastrophic backtracking); the tokenizer file is broken or hostile.");
        clock.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(30));
        tokenizer.Encode("ab").Should().Equal(0, 1); // a harmless text still encodes
    }

    [Fact]
    public void An_invalid_Split_pattern_fails_on_load_naming_file_and_pattern()
    {
        string path = WriteTokenizer(new JsonObject
        {
            ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = "(a" }, ["behavior"] = "Isolated", ["invert"] = false,
        });

        var act = () => HfTokenizer.Load(_temp.Path);

        act.Should().Throw<InvalidDataException>().Which.Message.Should().StartWith($"'{path}': the Split pre-tokenizer's pattern \"(a\" is not a valid .NET regular expression: ");
    }
}
