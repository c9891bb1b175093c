using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using static TorchSharp.torch;
using Generator = Microsoft.ML.Lora.Generation.Generator;

namespace Microsoft.ML.Lora.Tests.Models;

public class ArchitectureVariantTests
{
    [Fact]
    public void Alibi_slopes_match_transformers_for_non_power_of_two_heads()
    {
        BloomForCausalLm.AlibiSlopes(4).Should().Equal(0.25f, 0.0625f, 0.015625f, 0.00390625f);
        BloomForCausalLm.AlibiSlopes(6).Should().Equal(0.25f, 0.0625f, 0.015625f, 0.00390625f, 0.5f, 0.125f);
        BloomForCausalLm.AlibiSlopes(12).Should().HaveCount(12);
    }

    private static ModelConfig Llama(string type, JsonObject? extra = null)
    {
        var json = new JsonObject
        {
            ["model_type"] = type, ["vocab_size"] = 100, ["hidden_size"] = 32, ["num_hidden_layers"] = 2, ["num_attention_heads"] = 4,
            ["num_key_value_heads"] = 1, ["intermediate_size"] = 48, ["max_position_embeddings"] = 64, ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = false,
        };
        foreach (var (k, v) in extra ?? []) json[k] = v?.DeepClone();
        return ModelConfig.Parse(json);
    }

    [Fact]
    public void Mistral_sliding_window_wider_than_the_sequence_changes_nothing_and_a_narrow_one_does()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = randint(0, 100, [2, 12]);
        using var full = ModelFactory.CreateRandom(Llama("mistral", new JsonObject { ["sliding_window"] = 64 }), 5);
        using var narrow = ModelFactory.CreateRandom(Llama("mistral", new JsonObject { ["sliding_window"] = 3 }), 5);
        using var none = ModelFactory.CreateRandom(Llama("llama"), 5);
        full.Config.SlidingWindow.Should().Be(64);
        var reference = none.Forward(ids);
        full.Forward(ids).allclose(reference, 0, 0).Should().BeTrue();
        narrow.Forward(ids)[.., ..3].allclose(reference[.., ..3], 1e-6, 1e-6).Should().BeTrue();
        narrow.Forward(ids)[.., 3..].allclose(reference[.., 3..], 1e-3, 1e-3).Should().BeFalse();
    }

    [Fact]
    public void Llama3_rope_scaling_keeps_high_frequencies_and_divides_low_ones()
    {
        var config = Llama("llama", new JsonObject
        {
            ["rope_theta"] = 500000.0,
            ["rope_scaling"] = new JsonObject { ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0, ["original_max_position_embeddings"] = 8192 },
        });
        var plain = Rotary.InverseFrequencies(Llama("llama", new JsonObject { ["rope_theta"] = 500000.0 }));
        var scaled = Rotary.InverseFrequencies(config);
        scaled[0].Should().Be(plain[0]);
        scaled[^1].Should().BeApproximately(plain[^1] / 8, 1e-12f);
        using var scope = NewDisposeScope();
        using var model = ModelFactory.CreateRandom(config, 1);
        using var _ = no_grad();
        model.Forward(randint(0, 100, [1, 5])).isfinite().all().item<bool>().Should().BeTrue();
    }

    [Fact]
    public void Generation_does_not_leak_tensors()
    {
        using var model = ModelLoader.Load(Fixtures.Model("llama"));
        var gen = new Generator(model);
        var options = new Microsoft.ML.Lora.Generation.GenerationOptions { MaxNewTokens = 8, EosTokenIds = [] };
        gen.Generate([518, 68, 330], options);
        long before = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 3; i++) gen.Generate([518, 68, 330], options);
        TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount.Should().Be(before);
    }

    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    [InlineData("gemma2")]
    public void Backward_through_padded_batch_gives_finite_gradients(string arch)
    {
        using var scope = NewDisposeScope();
        using var model = ModelLoader.Load(Fixtures.Model(arch));
        foreach (var p in model.parameters()) p.requires_grad = true;
        var ids = ModelFixtureTests.Ref(arch, "logits_input_ids");
        var mask = ModelFixtureTests.Ref(arch, "logits_attention_mask");
        var logits = model.Forward(ids, mask);
        var valid = mask.to_type(ScalarType.Bool).unsqueeze(-1).expand_as(logits);
        logits.masked_select(valid).pow(2).mean().backward();
        foreach (var (name, p) in model.named_parameters())
            p.grad!.isfinite().all().item<bool>().Should().BeTrue(name);
    }
}
