using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.Tests.Tokenization;

/// <summary>BLOOM's pre-tokenizer (no fixture exists): its Split regex leaves gaps that must be kept.</summary>
public sealed class BloomSplitTests : IDisposable
{
    private const string BloomPattern = " ?[^(\\s|[.,!?…。，、।۔،])]+";
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("mllora-bloom-");

    public void Dispose() => _dir.Delete(true);

    [Fact]
    public void NestedCharacterClassIsFlattened() =>
        SplitStep.FlattenNestedClasses(BloomPattern).Should().Be(" ?[^(\\s|.,!?…。，、।۔،)]+");

    [Fact]
    public void SplitIsolatedKeepsPunctuation()
    {
        var pre = new HfPreTokenizer([
            new SplitStep(new System.Text.RegularExpressions.Regex(SplitStep.FlattenNestedClasses(BloomPattern)), SplitBehavior.Isolated, false),
            new ByteLevelStep(false, false)]);
        const string text = "Hello, world! Is it (really) done... yes。";
        var pieces = pre.Pieces(text).Select(p => text.Substring(p.Offset, p.Length)).ToList();
        // The gaps between matches (" (", "...") stay whole pieces, as in HF.
        pieces.Should().Equal("Hello", ",", " world", "!", " Is", " it", " (", "really", ")", " done", "...", " yes", "。");
        string.Concat(pieces).Should().Be(text);
    }

    [Fact]
    public void HandMadeBloomTokenizerRoundTripsPunctuation()
    {
        // Vocabulary: the 256 byte-level characters plus "He", "Hel", "Hello"; merges build "Hello".
        var vocab = new JsonObject();
        for (var b = 0; b < 256; b++) vocab[ByteLevel.ByteToChar[b].ToString()] = b;
        vocab["He"] = 256; vocab["ll"] = 257; vocab["Hell"] = 258; vocab["Hello"] = 259;
        var root = new JsonObject
        {
            ["added_tokens"] = new JsonArray(new JsonObject { ["id"] = 260, ["content"] = "</s>", ["special"] = true }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = BloomPattern }, ["behavior"] = "Isolated", ["invert"] = false },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false }),
            },
            ["post_processor"] = null,
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = false },
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = new JsonArray("H e", "l l", "He ll", "Hell o") },
        };
        File.WriteAllText(Path.Combine(_dir.FullName, "tokenizer.json"), root.ToJsonString());
        File.WriteAllText(Path.Combine(_dir.FullName, "tokenizer_config.json"), """{"eos_token":"</s>","pad_token":"<pad>"}""");
        var tok = HfTokenizer.Load(_dir.FullName);

        var ids = tok.Encode("Hello, Hello!</s>");
        ids.Should().Equal(259, ',', ByteLevel.CharToByte['Ġ'], 259, '!', 260);
        tok.Decode(ids).Should().Be("Hello, Hello!");
        tok.Decode(ids, skipSpecialTokens: false).Should().Be("Hello, Hello!</s>");
        tok.Encode("¿Qué tal? Très bien…").Length.Should().BeGreaterThan(0);
        tok.Decode(tok.Encode("¿Qué tal? Très bien…")).Should().Be("¿Qué tal? Très bien…");
    }
}
