using System.Text;
using System.Text.Json;
using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.Tests.Tokenization;

public class FixtureCasesTests
{
    private sealed record Case(string text, int[] ids, int[] ids_with_special, string decoded);

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama2")]
    [InlineData("llama3")]
    [InlineData("qwen3")]
    public void EveryCaseMatchesHuggingFace(string name)
    {
        var folder = Fixtures.Tokenizer(name);
        var tokenizer = HfTokenizer.Load(folder);
        var cases = File.ReadLines(Path.Combine(folder, "cases.jsonl")).Where(l => l.Length > 0)
            .Select(l => JsonSerializer.Deserialize<Case>(l)!).ToList();
        var failures = new StringBuilder();
        var equal = 0;
        foreach (var c in cases)
        {
            var ok = true;
            var ids = tokenizer.Encode(c.text, addSpecialTokens: false);
            if (!ids.SequenceEqual(c.ids)) { ok = false; failures.AppendLine($"ids      text={Show(c.text)}\n  expected [{string.Join(",", c.ids)}]\n  actual   [{string.Join(",", ids)}]"); }
            var withSpecial = tokenizer.Encode(c.text);
            if (!withSpecial.SequenceEqual(c.ids_with_special)) { ok = false; failures.AppendLine($"special  text={Show(c.text)}\n  expected [{string.Join(",", c.ids_with_special)}]\n  actual   [{string.Join(",", withSpecial)}]"); }
            var decoded = tokenizer.Decode(c.ids, skipSpecialTokens: true);
            if (decoded != c.decoded) { ok = false; failures.AppendLine($"decoded  ids=[{string.Join(",", c.ids)}]\n  expected {Show(c.decoded)}\n  actual   {Show(decoded)}"); }
            if (ok) equal++;
        }
        Console.WriteLine($"{name}: {equal}/{cases.Count} cases equal");
        failures.Length.Should().Be(0, $"{name}: {equal}/{cases.Count} cases equal; mismatches:\n{failures}");
        cases.Count.Should().Be(40);
    }

    private static string Show(string s) => JsonSerializer.Serialize(s.Length > 300 ? s[..300] + "…" : s);

    [Fact]
    public void VocabJsonAndMergesGiveTheSameIdsAsTokenizerJson()
    {
        var dir = Directory.CreateTempSubdirectory("mllora-gpt2-");
        try
        {
            foreach (var f in new[] { "vocab.json", "merges.txt", "tokenizer_config.json" })
                File.Copy(Path.Combine(Fixtures.Tokenizer("gpt2"), f), Path.Combine(dir.FullName, f));
            var fromFiles = HfTokenizer.Load(dir.FullName);
            var fromJson = HfTokenizer.Load(Fixtures.Tokenizer("gpt2"));
            const string text = "Hello world, it's 2024!<|endoftext|> Ünïcödé 你好";
            fromFiles.Encode(text).Should().Equal(fromJson.Encode(text));
            fromFiles.Decode(fromFiles.Encode(text), skipSpecialTokens: false).Should().Be(text);
            fromFiles.EosId.Should().Be(50256);
        }
        finally { dir.Delete(true); }
    }

    [Fact]
    public void SpecialIdsAndVocabSize()
    {
        var llama2 = HfTokenizer.Load(Fixtures.Tokenizer("llama2"));
        (llama2.BosId, llama2.EosId, llama2.PadId, llama2.VocabSize).Should().Be((1, 2, 2, 32000));
        var qwen3 = HfTokenizer.Load(Fixtures.Tokenizer("qwen3"));
        (qwen3.BosId, qwen3.EosId, qwen3.PadId).Should().Be(((int?)null, 151645, 151643));
        qwen3.VocabSize.Should().Be(151669);
        var gpt2 = HfTokenizer.Load(Fixtures.Tokenizer("gpt2"));
        gpt2.PadId.Should().Be(50256, "without a pad token, EOS pads");
        gpt2.VocabSize.Should().Be(50257);
    }

    [Fact]
    public void DecodeKeepsSpecialTokensWhenAsked()
    {
        var llama2 = HfTokenizer.Load(Fixtures.Tokenizer("llama2"));
        var ids = llama2.Encode("Hello world");
        ids[0].Should().Be(1);
        llama2.Decode(ids, skipSpecialTokens: false).Should().Be("<s> Hello world");
        llama2.Decode(ids).Should().Be("Hello world");
    }
}
