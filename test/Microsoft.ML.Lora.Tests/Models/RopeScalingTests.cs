using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Models;

/// <summary>rope_scaling "dynamic" and "yarn" against transformers 4.57's formulas, worked out for head_dim 16, theta 10000.</summary>
public class RopeScalingTests
{
    private const int Dim = 16;

    private static ModelConfig Llama(JsonObject? ropeScaling, double theta = 10000)
    {
        var json = new JsonObject
        {
            ["model_type"] = "llama", ["vocab_size"] = 100, ["hidden_size"] = 64, ["num_hidden_layers"] = 2, ["num_attention_heads"] = 4,
            ["num_key_value_heads"] = 2, ["intermediate_size"] = 48, ["max_position_embeddings"] = 32, ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = false, ["rope_theta"] = theta, ["rope_scaling"] = ropeScaling,
        };
        return ModelConfig.Parse(json);
    }

    // std 0.02 weights leave attention almost uniform, so positions barely move the logits; std 0.5 makes them matter.
    private static CausalLm Random(ModelConfig config, long seed)
    {
        var model = ModelFactory.CreateRandom(config, seed);
        using var _ = no_grad();
        foreach (var p in model.parameters()) if (p.dim() >= 2) p.mul_(25);
        return model;
    }

    private static double MaxDiff(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    // 1 / theta^(2i/16) for i = 0..7.
    private static double[] Plain(double theta) => [.. Enumerable.Range(0, Dim / 2).Select(i => Math.Pow(theta, -2.0 * i / Dim))];

    private static void ShouldEqual(float[] actual, double[] expected)
    {
        actual.Should().HaveCount(expected.Length);
        for (int i = 0; i < expected.Length; i++) ((double)actual[i]).Should().BeApproximately(expected[i], 1e-6 * Math.Max(1, expected[i]), $"index {i}");
    }

    [Fact]
    public void Yarn_blends_kept_and_divided_frequencies_over_the_ramp_and_scales_attention()
    {
        // original max 32, beta_fast 32, beta_slow 1: correction dims 16 ln(32 / (2π r)) / (2 ln 10000) are -1.60 (r = 32)
        // and 1.41 (r = 1), truncated to [0, 2]: ramp 0, 0.5, 1, ... so i = 0 is kept, i = 1 half-and-half, the rest / 4.
        var (inv, attention) = Rotary.Parameters(Llama(new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0, ["original_max_position_embeddings"] = 32 }));
        var p = Plain(10000);
        ShouldEqual(inv, [p[0], p[1] * (0.5 / 4 + 0.5), .. p[2..].Select(f => f / 4)]);
        attention.Should().BeApproximately(0.1 * Math.Log(4) + 1, 1e-12);
    }

    [Fact]
    public void Yarn_without_truncation_ramps_from_the_exact_correction_dims()
    {
        var (inv, _) = Rotary.Parameters(Llama(new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0, ["truncate"] = false }));
        double high = Dim * Math.Log(32 / (2 * Math.PI)) / (2 * Math.Log(10000)); // beta_slow 1; beta_fast's dim is < 0, clamped to 0
        var p = Plain(10000);
        double ramp1 = 1 / high; // i = 1 lies inside (0, 1.41)
        ShouldEqual(inv, [p[0], p[1] / 4 * ramp1 + p[1] * (1 - ramp1), .. p[2..].Select(f => f / 4)]);
    }

    [Fact]
    public void Yarn_attention_factor_comes_from_the_config_or_mscale_ratio()
    {
        double Attention(JsonObject extra)
        {
            var s = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0 };
            foreach (var (k, v) in extra) s[k] = v?.DeepClone();
            return Rotary.Parameters(Llama(s)).AttentionScaling;
        }
        Attention(new JsonObject { ["attention_factor"] = 0.5 }).Should().Be(0.5);
        Attention(new JsonObject { ["mscale"] = 1.0, ["mscale_all_dim"] = 0.5 })
            .Should().BeApproximately((0.1 * Math.Log(4) + 1) / (0.05 * Math.Log(4) + 1), 1e-12);
        Attention(new JsonObject { ["mscale"] = 0.707 }).Should().BeApproximately(0.1 * Math.Log(4) + 1, 1e-12); // needs both
    }

    [Fact]
    public void Dynamic_is_plain_up_to_max_positions_and_ntk_scaled_beyond()
    {
        var config = Llama(new JsonObject { ["rope_type"] = "dynamic", ["factor"] = 4.0 });
        ShouldEqual(Rotary.InverseFrequencies(config), Plain(10000));
        ShouldEqual(Rotary.InverseFrequencies(config, 20), Plain(10000));
        ShouldEqual(Rotary.InverseFrequencies(config, 32), Plain(10000));
        // base * (factor * 64 / 32 - (factor - 1))^(16 / 14) = 10000 * 5^(8/7)
        ShouldEqual(Rotary.InverseFrequencies(config, 64), Plain(10000 * Math.Pow(5, 8.0 / 7)));
        Rotary.Parameters(config, 64).AttentionScaling.Should().Be(1);
    }

    [Fact]
    public void Dynamic_forward_grows_keeps_and_resets_its_frequencies_as_transformers_does()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = randint(0, 100, [1, 40]);
        using var dynamic = Random(Llama(new JsonObject { ["rope_type"] = "dynamic", ["factor"] = 4.0 }), 3);
        using var plain = Random(Llama(null), 3);
        // 40 positions > 32: base 10000 * (4 * 40 / 32 - 3)^(8/7) = 10000 * 2^(8/7).
        using var grown = Random(Llama(null, 10000 * Math.Pow(2, 8.0 / 7)), 3);

        var longLogits = dynamic.Forward(ids);
        longLogits.shape.Should().Equal(1, 40, 100);
        longLogits.allclose(grown.Forward(ids), 1e-5, 1e-5).Should().BeTrue();
        MaxDiff(longLogits, plain.Forward(ids)).Should().BeGreaterThan(0.1);
        // 34 positions: still >= 32, so the frequencies of the longest sequence (40) stay.
        dynamic.Forward(ids[.., ..34]).allclose(grown.Forward(ids[.., ..34]), 1e-5, 1e-5).Should().BeTrue();
        // 10 positions < 32: back to the original frequencies.
        dynamic.Forward(ids[.., ..10]).allclose(plain.Forward(ids[.., ..10]), 1e-5, 1e-5).Should().BeTrue();
    }

    [Theory]
    [InlineData("yarn")]
    [InlineData("dynamic")]
    public void Factor_one_gives_plain_rope_logits(string type)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = randint(0, 100, [2, 12]);
        using var scaled = Random(Llama(new JsonObject { ["rope_type"] = type, ["factor"] = 1.0 }), 7);
        using var plain = Random(Llama(null), 7);
        var logits = scaled.Forward(ids);
        logits.shape.Should().Equal(2, 12, 100);
        logits.isfinite().all().item<bool>().Should().BeTrue();
        logits.allclose(plain.Forward(ids), 1e-5, 1e-5).Should().BeTrue();
    }

    [Theory]
    [InlineData("yarn")]
    [InlineData("dynamic")]
    [InlineData("linear")]
    [InlineData("llama3")]
    public void Scaled_forward_gives_finite_logits_of_the_right_shape(string type)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var model = Random(Llama(new JsonObject { ["rope_type"] = type, ["factor"] = 4.0, ["original_max_position_embeddings"] = 32 }), 7);
        var logits = model.Forward(randint(0, 100, [2, 40]));
        logits.shape.Should().Equal(2, 40, 100);
        logits.isfinite().all().item<bool>().Should().BeTrue();
    }

    [Fact]
    public void Yarn_attention_factor_multiplies_cos_and_sin()
    {
        using var scope = NewDisposeScope();
        var positions = arange(5L).unsqueeze(0);
        var (cos, sin) = Rotary.CosSin([1f, 0.1f], positions);
        var (cos2, sin2) = Rotary.CosSin([1f, 0.1f], positions, 1.5);
        cos2.allclose(cos * 1.5, 0, 1e-7).Should().BeTrue();
        sin2.allclose(sin * 1.5, 0, 1e-7).Should().BeTrue();
    }

    [Fact]
    public void Older_type_key_is_read_and_an_unknown_type_names_itself()
    {
        ShouldEqual(Rotary.InverseFrequencies(Llama(new JsonObject { ["type"] = "linear", ["factor"] = 2.0 })), [.. Plain(10000).Select(f => f / 2)]);
        var act = () => Random(Llama(new JsonObject { ["rope_type"] = "su", ["factor"] = 2.0 }), 1);
        act.Should().Throw<NotSupportedException>().WithMessage("*'su'*supported*dynamic*yarn*");
    }
}
