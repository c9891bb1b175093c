using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;

namespace Microsoft.ML.Lora.Tests.PeftMethods;

/// <summary>PeftParameterCount from the config alone against PEFT's trainable_params, and the BLOOM-7b1 table of docs/peft-methods.md.</summary>
public class ParameterCountTests
{
    private static long Count(string method, string arch)
    {
        var model = ModelConfig.Load(Path.Combine(Fixtures.Model(arch), "config.json"));
        return method switch
        {
            "dora" => PeftParameterCount.Lora(model, new LoraConfig { R = 8, LoraAlpha = 16, UseDora = true }),
            "ia3" => PeftParameterCount.IA3(model, new IA3Config()),
            _ => PeftParameterCount.PromptLearning(model, PromptLearningTests.Config(method, arch)),
        };
    }

    [Theory]
    [InlineData("dora", "llama")]
    [InlineData("ia3", "llama")]
    [InlineData("prompt_tuning", "llama")]
    [InlineData("prompt_tuning", "bloom")]
    [InlineData("prefix_tuning", "llama")]
    [InlineData("prefix_tuning", "bloom")]
    [InlineData("prefix_tuning_projection", "llama")]
    [InlineData("prefix_tuning_projection", "bloom")]
    [InlineData("p_tuning", "llama")]
    [InlineData("p_tuning", "bloom")]
    public void Count_from_config_equals_peft(string method, string arch)
    {
        var meta = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Root, "peft", method, arch, "meta.json")))!;
        Count(method, arch).Should().Be(meta["trainable_params"]!.GetValue<long>());
    }

    [Fact]
    public void Bloom_7b1_table_of_the_docs_is_what_the_library_computes()
    {
        var bloom = new ModelConfig { ModelType = "bloom", VocabSize = 250880, HiddenSize = 4096, NumLayers = 30, NumHeads = 32, NumKeyValueHeads = 32, HeadDim = 128, IntermediateSize = 16384 };
        var counts = new[]
        {
            PeftParameterCount.Lora(bloom, new LoraConfig()),
            PeftParameterCount.Lora(bloom, new LoraConfig { UseDora = true }),
            PeftParameterCount.IA3(bloom, new IA3Config()),
            PeftParameterCount.PromptLearning(bloom, new PromptTuningConfig { NumVirtualTokens = 20 }),
            PeftParameterCount.PromptLearning(bloom, new PromptEncoderConfig { NumVirtualTokens = 20 }),
            PeftParameterCount.PromptLearning(bloom, new PrefixTuningConfig { NumVirtualTokens = 20 }),
            PeftParameterCount.PromptLearning(bloom, new PrefixTuningConfig { NumVirtualTokens = 20, PrefixProjection = true }),
        };
        var docs = File.ReadAllLines(Path.Combine(RepositoryRoot(), "docs", "peft-methods.md"))
            .Where(l => l.StartsWith("| ", StringComparison.Ordinal) && l.Count(ch => ch == '|') == 6)
            .Skip(2).Select(l => long.Parse(l.Split('|')[4].Trim().Replace(",", ""), System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        docs.Should().Equal(counts);
    }

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "MLLora.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("MLLora.sln not found above the test binaries.");
    }
}
