using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.Tests.Tokenization;

public class BatchEncodingTests
{
    private static readonly HfTokenizer Gpt2 = HfTokenizer.Load(Fixtures.Tokenizer("gpt2"));
    private static readonly HfTokenizer Llama2 = HfTokenizer.Load(Fixtures.Tokenizer("llama2"));

    [Fact]
    public void RightPaddingWithEos()
    {
        // "Hello world" = [15496, 995], "Hi" = [17250] in GPT-2; pad = EOS = 50256.
        var batch = Gpt2.EncodeBatch(["Hello world", "Hi"]);
        batch.InputIds.Should().BeEquivalentTo(new[] { new[] { 15496, 995 }, new[] { 17250, 50256 } }, o => o.WithStrictOrdering());
        batch.AttentionMask.Should().BeEquivalentTo(new[] { new[] { 1, 1 }, new[] { 1, 0 } }, o => o.WithStrictOrdering());
    }

    [Fact]
    public void LeftPaddingWithBos()
    {
        // Mistral: "Hello world" = [1, 22557, 1526]; "Hi" = [1, 15359]; pad = EOS = 2.
        var batch = Llama2.EncodeBatch(["Hello world", "Hi"], paddingSide: PaddingSide.Left);
        batch.InputIds.Should().BeEquivalentTo(new[] { new[] { 1, 22557, 1526 }, new[] { 2, 1, 15359 } }, o => o.WithStrictOrdering());
        batch.AttentionMask.Should().BeEquivalentTo(new[] { new[] { 1, 1, 1 }, new[] { 0, 1, 1 } }, o => o.WithStrictOrdering());
    }

    [Fact]
    public void TruncationKeepsTheFirstTokens()
    {
        var full = Gpt2.Encode("The quick brown fox jumps over the lazy dog");
        var batch = Gpt2.EncodeBatch(["The quick brown fox jumps over the lazy dog", "Hi"], maxLength: 4);
        batch.InputIds[0].Should().Equal(full[..4]);
        batch.InputIds[1].Should().Equal(17250, 50256, 50256, 50256);
        batch.AttentionMask[1].Should().Equal(1, 0, 0, 0);
    }

    [Fact]
    public void PadToMaxLength()
    {
        var batch = Gpt2.EncodeBatch(["Hi"], maxLength: 3, paddingSide: PaddingSide.Left, padToMaxLength: true);
        batch.InputIds[0].Should().Equal(50256, 50256, 17250);
        batch.AttentionMask[0].Should().Equal(0, 0, 1);
    }
}

public class OffsetTests
{
    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama3")]
    [InlineData("qwen3")]
    public void OffsetsCoverTheTextAndMatchTheIds(string name)
    {
        var tok = HfTokenizer.Load(Fixtures.Tokenizer(name));
        const string text = "Hello world, it's 2024! Café <|endoftext|> 你好";
        var spans = tok.EncodeWithOffsets(text, addSpecialTokens: false);
        spans.Select(s => s.Id).Should().Equal(tok.Encode(text, addSpecialTokens: false));
        spans[0].Should().Be(new TokenSpan(spans[0].Id, 0, 5)); // "Hello"
        spans[1].Start.Should().Be(5);                          // " world"
        text.Substring(spans[1].Start, spans[1].Length).Should().Be(" world");
        spans[^1].Start.Should().BeLessThan(text.Length);
        (spans[^1].Start + spans[^1].Length).Should().Be(text.Length);
    }

    [Fact]
    public void SentencePieceOffsetsAreNotSupported()
    {
        var tok = HfTokenizer.Load(Fixtures.Tokenizer("llama2"));
        var act = () => tok.EncodeWithOffsets("Hello");
        act.Should().Throw<NotSupportedException>().WithMessage("*byte-level*");
    }
}
