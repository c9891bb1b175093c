using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.Tests.Tokenization;

/// <summary>The flags of a tokenizer.json BPE <c>model</c> (ignore_merges, fuse_unk, ...), as Hugging Face tokenizers applies them.</summary>
public sealed class ModelFlagTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("mllora-tokflags-");

    public void Dispose() => _dir.Delete(true);

    [Fact]
    public void Llama3_words_that_are_in_the_vocabulary_are_one_token_even_when_merges_cannot_build_them()
    {
        // " milyon" is entry 107667 of Llama-3's vocabulary; its merges stop at " m" "ily" "on" = [296, 1570, 263].
        var tokenizer = HfTokenizer.Load(Fixtures.Tokenizer("llama3"));
        tokenizer.Encode(" milyon", addSpecialTokens: false).Should().Equal(107667);
        tokenizer.Encode("Bir milyon dikkat", addSpecialTokens: false).Should().Equal(tokenizer.Encode("Bir", false)[0], 107667, 106350);
        tokenizer.Encode(" việc", addSpecialTokens: false).Should().Equal(100769);
        var spans = tokenizer.EncodeWithOffsets("Bir milyon", addSpecialTokens: false);
        spans.Select(s => s.Id).Should().Equal(tokenizer.Encode("Bir milyon", false));
        spans[^1].Should().Be(new TokenSpan(107667, 3, 7));
    }

    /// <summary>A tiny byte-level or SentencePiece-style tokenizer: "abc" is in the vocabulary but merges only make "ab".</summary>
    private string Write(bool byteLevel, JsonObject? modelFlags = null)
    {
        var vocab = new JsonObject { ["a"] = 0, ["b"] = 1, ["c"] = 2, ["ab"] = 3, ["abc"] = 4, ["<unk>"] = 5 };
        var model = new JsonObject { ["type"] = "BPE", ["vocab"] = vocab, ["merges"] = new JsonArray("a b"), ["unk_token"] = "<unk>" };
        foreach (var (k, v) in modelFlags ?? []) model[k] = v?.DeepClone();
        var root = new JsonObject { ["model"] = model, ["added_tokens"] = new JsonArray() };
        if (byteLevel)
            root["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true };
        var path = Path.Combine(_dir.FullName, "tokenizer.json");
        File.WriteAllText(path, root.ToJsonString());
        return path;
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Ignore_merges_takes_a_whole_word_from_the_vocabulary_and_otherwise_merges(bool byteLevel)
    {
        Write(byteLevel, new JsonObject { ["ignore_merges"] = true });
        HfTokenizer.Load(_dir.FullName).Encode("abc", false).Should().Equal(4);
        HfTokenizer.Load(_dir.FullName).Encode("abcab", false).Should().Equal(3, 2, 3);
        Write(byteLevel, new JsonObject { ["ignore_merges"] = false });
        HfTokenizer.Load(_dir.FullName).Encode("abc", false).Should().Equal(3, 2);
    }

    [Theory]
    [InlineData(true, new[] { 5, 0, 5 })]
    [InlineData(false, new[] { 5, 5, 0, 5, 5, 5 })]
    public void Fuse_unk_joins_consecutive_unknown_characters_into_one_unk(bool fuse, int[] expected)
    {
        Write(byteLevel: false, new JsonObject { ["fuse_unk"] = fuse });
        HfTokenizer.Load(_dir.FullName).Encode("xyaxyz", false).Should().Equal(expected);
    }

    [Theory]
    [InlineData("continuing_subword_prefix", "\"##\"")]
    [InlineData("end_of_word_suffix", "\"</w>\"")]
    [InlineData("dropout", "0.1")]
    public void Flags_that_change_the_encoding_and_are_not_implemented_are_refused_naming_flag_and_file(string flag, string value)
    {
        var path = Write(byteLevel: true, new JsonObject { [flag] = JsonNode.Parse(value) });
        var act = () => HfTokenizer.Load(_dir.FullName);
        act.Should().Throw<NotSupportedException>().Which.Message.Should().Contain(flag).And.Contain(path);
    }

    [Theory]
    [InlineData("continuing_subword_prefix", "\"\"")]
    [InlineData("end_of_word_suffix", "null")]
    [InlineData("dropout", "null")]
    [InlineData("dropout", "0.0")]
    public void Flags_at_their_neutral_value_are_accepted(string flag, string value)
    {
        Write(byteLevel: true, new JsonObject { [flag] = JsonNode.Parse(value) });
        HfTokenizer.Load(_dir.FullName).Encode("abc", false).Should().Equal(3, 2);
    }

    [Fact]
    public void Byte_fallback_with_a_byte_level_pre_tokenizer_is_refused_naming_flag_and_file()
    {
        var path = Write(byteLevel: true, new JsonObject { ["byte_fallback"] = true });
        var act = () => HfTokenizer.Load(_dir.FullName);
        act.Should().Throw<NotSupportedException>().Which.Message.Should().Contain("byte_fallback").And.Contain(path);
    }
}
