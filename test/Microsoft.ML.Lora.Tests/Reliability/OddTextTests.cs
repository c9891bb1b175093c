using Microsoft.ML.Data;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Tests.MLNet;
using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// Text a .NET string can hold but a Rust string (what Hugging Face tokenizers receive) cannot, or that .NET's
/// normalization refuses: a lone surrogate is encoded as U+FFFD, as UTF-8 encoding replaces it; U+FFFE and U+FFFF are
/// Unicode scalar values and encode as such, also through Qwen's NFC normalizer (where .NET threw "String contains
/// invalid Unicode code points" and a Fit aborted).
/// </summary>
public sealed class OddTextTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama2")]
    [InlineData("llama3")]
    [InlineData("qwen3")]
    public void A_lone_surrogate_encodes_as_U_FFFD_and_noncharacters_encode_as_themselves(string name)
    {
        var t = HfTokenizer.Load(Fixtures.Tokenizer(name));

        t.Encode("a\uD800b").Should().Equal(t.Encode("a\uFFFDb"));
        t.Encode("a\uDC00").Should().Equal(t.Encode("a\uFFFD"));
        t.Encode("\uDBFF\uD800 x").Should().Equal(t.Encode("\uFFFD\uFFFD x"), "two high surrogates in a row are two lone ones");
        t.Encode("\uD83D\uDE00 ok").Should().NotEqual(t.Encode("\uFFFD\uFFFD ok"), "a valid pair (an emoji) is kept");
        foreach (var odd in new[] { "\uFFFE", "\uFFFF" })
        {
            var ids = t.Encode($"x{odd}y", addSpecialTokens: false);
            if (name == "llama2") // SentencePiece with byte fallback: the UTF-8 bytes EF BF BE/BF as <0xNN> tokens (id = byte + 3)
                ids[1..4].Should().Equal(0xEF + 3, 0xBF + 3, (0x80 | (odd[0] & 0x3F)) + 3);
            else
                ids.Should().Equal([.. t.Encode("x", false), .. t.Encode(odd, false), .. t.Encode("y", false)],
                    $"U+{(int)odd[0]:X4} is a pre-token of its own between two letters");
        }
    }

    [Fact]
    public void NFC_normalizes_around_U_FFFE()
    {
        var t = HfTokenizer.Load(Fixtures.Tokenizer("qwen3"));
        // e + combining acute composes to é on either side of U+FFFE, never across it.
        t.Encode("e\u0301\uFFFEe\u0301", false).Should().Equal(t.Encode("\u00e9\uFFFE\u00e9", false));
    }

    [Fact]
    public void A_Qwen_Fit_and_Transform_with_lone_surrogates_and_U_FFFE_in_rows_run_to_the_end()
    {
        string folder = _temp.File("qwen");
        Directory.CreateDirectory(folder);
        foreach (var file in new[] { "tokenizer.json", "tokenizer_config.json" })
            File.Copy(Path.Combine(Fixtures.Tokenizer("qwen3"), file), Path.Combine(folder, file));
        var tokenizer = HfTokenizer.Load(folder);
        var json = new JsonObject { ["model_type"] = "qwen2", ["vocab_size"] = tokenizer.VocabSize, ["eos_token_id"] = tokenizer.EosId, ["tie_word_embeddings"] = true };
        Architectures.For("qwen2").TinyConfig(json, (16, 1, 2));
        using (var model = ModelFactory.CreateRandom(ModelConfig.Parse(json), seed: 1)) ModelFactory.Save(model, folder);

        var ml = new MLContext(seed: 1);
        Row[] rows =
        [
            new() { Prompt = "plain ->: ", Completion = "text" },
            new() { Prompt = "lone \uD800 high ->: ", Completion = "and \uDC00 low" },
            new() { Prompt = "non\uFFFEcharacter ->: ", Completion = "\uFFFF" },
            new() { Prompt = "ends high \uD83D", Completion = "x\uFFFE" },
        ];
        var data = ml.Data.LoadFromEnumerable(rows);
        using var lora = ml.Lora().CausalLm(new LoraCausalLmOptions
        {
            BaseModelFolder = folder, Seed = 1, Lora = { Rank = 2, Alpha = 4 },
            Training = { MaxSteps = 1, BatchSize = 4 }, Generation = { MaxNewTokens = 2 },
        }).Fit(data);

        lora.Transform(data).GetColumn<string>("GeneratedText").Should().HaveCount(4);
    }
}
