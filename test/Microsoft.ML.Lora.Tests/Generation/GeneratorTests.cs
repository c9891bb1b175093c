using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using static TorchSharp.torch;
using Generator = Microsoft.ML.Lora.Generation.Generator;

namespace Microsoft.ML.Lora.Tests.Generation;

public class GeneratorTests
{
    internal static JsonObject Expected(string arch) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Model(arch), "generation.json")))!.AsObject();

    internal static long[] Ints(JsonNode? node) => [.. node!.AsArray().Select(n => n!.GetValue<long>())];

    private static readonly GenerationOptions Greedy16 = new() { MaxNewTokens = 16, EosTokenIds = [] };

    [Theory]
    [InlineData("bloom", true)]
    [InlineData("bloom", false)]
    [InlineData("gpt2", true)]
    [InlineData("gpt2", false)]
    [InlineData("llama", true)]
    [InlineData("llama", false)]
    [InlineData("qwen2", true)]
    [InlineData("qwen2", false)]
    [InlineData("qwen3", true)]
    [InlineData("qwen3", false)]
    [InlineData("phi3", true)]
    [InlineData("phi3", false)]
    [InlineData("gemma2", true)]
    [InlineData("gemma2", false)]
    public void Greedy_matches_transformers(string arch, bool useCache)
    {
        using var scope = NewDisposeScope();
        using var model = ModelLoader.Load(Fixtures.Model(arch));
        var expected = Ints(Expected(arch)[useCache ? "greedy_with_cache" : "greedy_without_cache"]);
        var prompt = expected[..6].Select(i => (int)i).ToList();
        var generated = new Generator(model).Generate(prompt, Greedy16 with { UseCache = useCache });
        generated.Select(i => (long)i).Should().Equal(expected[6..]);
    }

    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    [InlineData("gemma2")]
    public void Left_padded_batch_matches_transformers(string arch)
    {
        using var scope = NewDisposeScope();
        using var model = ModelLoader.Load(Fixtures.Model(arch));
        var ids = Models.ModelFixtureTests.Ref(arch, "gen_batch_input_ids");
        var mask = Models.ModelFixtureTests.Ref(arch, "gen_batch_attention_mask");
        var sequences = new Generator(model).Generate(ids, mask, Greedy16 with { PadTokenId = 0 });
        var expected = Expected(arch)["batch_left_padded"]!.AsArray();
        for (int r = 0; r < expected.Count; r++)
            sequences[r].data<long>().ToArray().Should().Equal(Ints(expected[r]));

        // The same through the list API (left padding done by the generator).
        var prompts = new List<IReadOnlyList<int>> { new[] { 611, 195, 321, 834, 123, 75 }, new[] { 671, 699, 169, 475 } };
        var rows = new Generator(model).Generate([.. Enumerable.Range(0, 2).Select(r => (IReadOnlyList<int>)[.. Ints(expected[r])[..6].Where((t, i) => r == 0 || i >= 2).Select(t => (int)t)])], Greedy16);
        for (int r = 0; r < 2; r++) rows[r].Select(i => (long)i).Should().Equal(Ints(expected[r])[6..]);
    }

    [Fact]
    public void Stops_on_eos_stop_sequence_and_stop_string_and_streams()
    {
        using var scope = NewDisposeScope();
        using var model = ModelLoader.Load(Fixtures.Model("gpt2"));
        var all = Ints(Expected("gpt2")["greedy_with_cache"]).Select(i => (int)i).ToArray();
        var prompt = all[..6];
        var gen = new Generator(model);
        gen.Generate(prompt, Greedy16 with { EosTokenIds = [all[9]] }).Should().Equal(all[6..10]);
        gen.Generate(prompt, Greedy16 with { StopSequences = [[all[8], all[9]]] }).Should().Equal(all[6..10]);
        gen.Generate(prompt, Greedy16 with { StopStrings = ["<254>"], Decode = t => string.Concat(t.Select(i => $"<{i}>")) })
            .Should().Equal(all[6..10]); // all[9] == 254
        var streamed = new List<int>();
        gen.Generate(prompt, Greedy16 with { MaxNewTokens = 5 }, streamed.Add).Should().Equal(all[6..11]);
        streamed.Should().Equal(all[6..11]);
        var asyncTokens = gen.StreamAsync(prompt, Greedy16 with { MaxNewTokens = 5 }).ToBlockingEnumerable().ToList();
        asyncTokens.SequenceEqual(all[6..11]).Should().BeTrue();
    }

    [Fact]
    public void Sampling_is_reproducible_with_a_seed_and_respects_top_k()
    {
        using var scope = NewDisposeScope();
        using var model = ModelLoader.Load(Fixtures.Model("llama"));
        var gen = new Generator(model);
        var options = new GenerationOptions { MaxNewTokens = 12, DoSample = true, Temperature = 0.8, TopK = 20, TopP = 0.9, RepetitionPenalty = 1.3, Seed = 7, EosTokenIds = [] };
        int[] prompt = [518, 68, 330];
        var a = gen.Generate(prompt, options);
        var b = gen.Generate(prompt, options);
        a.Should().Equal(b).And.HaveCount(12);
        // top_k = 1 is greedy.
        gen.Generate(prompt, options with { TopK = 1, RepetitionPenalty = 1.0 }).Should().Equal(gen.Generate(prompt, options with { DoSample = false, RepetitionPenalty = 1.0 }));
    }

    [Fact]
    public void Repetition_penalty_follows_transformers()
    {
        using var scope = NewDisposeScope();
        using var model = ModelLoader.Load(Fixtures.Model("gpt2"));
        var gen = new Generator(model);
        int[] prompt = [518, 68, 330, 185, 575, 619];
        var penalized = gen.Generate(prompt, Greedy16 with { RepetitionPenalty = 100.0 });
        // With a huge penalty no token of the sequence repeats (greedy alone repeats 710 and 254).
        prompt.Concat(penalized).Should().OnlyHaveUniqueItems();
    }
}
