using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using Microsoft.ML.Lora.Peft;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Models;

/// <summary>The architecture registry and what the wave-2 families (Qwen3, Phi-3, Gemma 2) add beyond the fixtures.</summary>
public class ArchitectureRegistryTests
{
    private static ModelConfig Parse(JsonObject json) => ModelConfig.Parse(json, "test config");

    /// <summary>microsoft/Phi-3-mini-4k-instruct's config.json (the fields the count needs).</summary>
    private static JsonObject Phi3Mini() => new()
    {
        ["model_type"] = "phi3", ["vocab_size"] = 32064, ["hidden_size"] = 3072, ["num_hidden_layers"] = 32,
        ["num_attention_heads"] = 32, ["num_key_value_heads"] = 32, ["intermediate_size"] = 8192,
        ["max_position_embeddings"] = 4096, ["original_max_position_embeddings"] = 4096, ["rms_norm_eps"] = 1e-5,
        ["sliding_window"] = 2047, ["tie_word_embeddings"] = false,
    };

    /// <summary>google/gemma-2-2b's config.json (the fields the count needs).</summary>
    private static JsonObject Gemma2_2b() => new()
    {
        ["model_type"] = "gemma2", ["vocab_size"] = 256000, ["hidden_size"] = 2304, ["num_hidden_layers"] = 26,
        ["num_attention_heads"] = 8, ["num_key_value_heads"] = 4, ["head_dim"] = 256, ["intermediate_size"] = 9216,
        ["query_pre_attn_scalar"] = 256, ["sliding_window"] = 4096,
    };

    [Fact]
    public void Phi3_mini_qkv_proj_lora_count_from_config_alone()
    {
        var config = Parse(Phi3Mini());
        LoraParameterCount.Trainable(config, new LoraConfig { R = 8, TargetModules = ["qkv_proj"] }).Should().Be(3_145_728);
    }

    [Fact]
    public void Gemma2_2b_default_lora_count_from_config_alone()
    {
        var config = Parse(Gemma2_2b());
        (config.HeadDim, config.NumKeyValueHeads).Should().Be((256, 4));
        LoraParameterCount.Trainable(config, new LoraConfig { R = 8 }).Should().Be(1_597_440);
    }

    [Fact]
    public void Phi3_has_no_default_targets_and_says_so_as_peft_does()
    {
        var config = Parse(Phi3Mini());
        var act = () => LoraParameterCount.Trainable(config, new LoraConfig());
        act.Should().Throw<ArgumentException>().Which.Message.Should().Be(
            "Please specify `target_modules` or `target_parameters`in `peft_config` (PEFT has no default LoRA target modules for model type 'phi3'): set TargetModules, for example [\"qkv_proj\"] or [\"all-linear\"].");
    }

    [Fact]
    public void Peft_default_targets_per_model_type()
    {
        var expected = new Dictionary<string, (string[]? Lora, string[]? Ia3, string[]? Ia3Ff)>
        {
            ["bloom"] = (["query_key_value"], ["query_key_value", "mlp.dense_4h_to_h"], ["mlp.dense_4h_to_h"]),
            ["gpt2"] = (["c_attn"], ["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
            ["llama"] = (["q_proj", "v_proj"], ["k_proj", "v_proj", "down_proj"], ["down_proj"]),
            ["mistral"] = (["q_proj", "v_proj"], ["k_proj", "v_proj", "down_proj"], ["down_proj"]),
            ["qwen2"] = (["q_proj", "v_proj"], ["q_proj", "v_proj", "down_proj"], ["down_proj"]),
            ["qwen3"] = (["q_proj", "v_proj"], ["q_proj", "v_proj", "down_proj"], ["down_proj"]),
            ["gemma2"] = (["q_proj", "v_proj"], ["q_proj", "v_proj", "down_proj"], ["down_proj"]),
            ["phi3"] = (null, null, null),
        };
        Architectures.ModelTypes.Should().BeEquivalentTo(expected.Keys);
        foreach (var (type, (lora, ia3, ff)) in expected)
        {
            var a = Architectures.For(type);
            a.LoraTargets.Should().BeEquivalentTo(lora, o => o.WithStrictOrdering(), type);
            a.Ia3Targets.Should().BeEquivalentTo(ia3, o => o.WithStrictOrdering(), type);
            a.Ia3FeedforwardModules.Should().BeEquivalentTo(ff, o => o.WithStrictOrdering(), type);
        }
    }

    /// <summary>For every registered family: the linear layers counted from the config are the model's, path for path and shape for shape.</summary>
    [Fact]
    public void Block_linears_of_every_description_are_the_models_linear_layers()
    {
        foreach (var type in Architectures.ModelTypes)
        {
            using var scope = NewDisposeScope();
            using var temp = new TempFolder();
            var folder = TinyBaseModel.Create(temp.Path, type, hiddenSize: 32, layers: 2, heads: 4, seed: 1);
            using var model = ModelLoader.Load(folder);
            model.Config.ModelType.Should().Be(type);
            var actual = LoraModel.LinearModules(model).Select(l => (l.Path, l.Linear.InFeatures, l.Linear.OutFeatures));
            var counted = LoraParameterCount.AllLinears(model.Config).Where(l => l.Path != "lm_head" || !model.Config.TieWordEmbeddings);
            actual.Should().BeEquivalentTo(counted, type);
        }
    }

    [Fact]
    public void Unsupported_model_type_lists_every_registered_type()
    {
        var act = () => Parse(new JsonObject { ["model_type"] = "t5" });
        act.Should().Throw<NotSupportedException>().Which.Message.Should()
            .Be("model_type 't5' in 'test config' is not supported; supported: bloom, gemma2, gpt2, llama, mistral, phi3, qwen2, qwen3.");
    }

    [Fact]
    public void Layer_types_follow_each_familys_rule()
    {
        var qwen = new JsonObject
        {
            ["model_type"] = "qwen2", ["vocab_size"] = 10, ["hidden_size"] = 8, ["num_hidden_layers"] = 3, ["num_attention_heads"] = 2,
            ["intermediate_size"] = 16, ["use_sliding_window"] = true, ["sliding_window"] = 5, ["max_window_layers"] = 1,
        };
        var c = Parse(qwen);
        c.LayerTypes.Should().Equal("full_attention", "sliding_attention", "sliding_attention");
        (c.SlidingWindowOf(0), c.SlidingWindowOf(1)).Should().Be(((int?)null, (int?)5));
        qwen["use_sliding_window"] = false;
        Parse(qwen).LayerTypes.Should().OnlyContain(t => t == "full_attention");
        qwen["model_type"] = "qwen3";
        qwen["use_sliding_window"] = true;
        Parse(qwen).SlidingWindowOf(2).Should().Be(5);

        var gemma = Gemma2_2b();
        gemma["num_hidden_layers"] = 4;
        var g = Parse(gemma);
        g.LayerTypes.Should().Equal("sliding_attention", "full_attention", "sliding_attention", "full_attention");
        g.SlidingWindowOf(0).Should().Be(4096);
        g.SlidingWindowOf(1).Should().BeNull();
        gemma["layer_types"] = new JsonArray("full_attention", "full_attention", "sliding_attention");
        var act = () => Parse(gemma);
        act.Should().Throw<InvalidDataException>().Which.Message.Should().Be("'test config' (gemma2) lists 3 layer_types for 4 layers (num_hidden_layers).");

        var phi = Phi3Mini();
        Parse(phi).SlidingWindowOf(31).Should().Be(2047);
        phi["sliding_window"] = null;
        Parse(phi).SlidingWindowOf(0).Should().BeNull();
    }

    private static ModelConfig LongRopePhi3(int headDim = 8)
    {
        var json = new JsonObject
        {
            ["model_type"] = "phi3", ["vocab_size"] = 50, ["hidden_size"] = 2 * headDim, ["num_hidden_layers"] = 1, ["num_attention_heads"] = 2,
            ["intermediate_size"] = 24, ["max_position_embeddings"] = 64, ["original_max_position_embeddings"] = 16,
            ["rope_theta"] = 10000.0,
            ["rope_scaling"] = new JsonObject
            {
                ["type"] = "longrope",
                ["short_factor"] = new JsonArray(1.0, 1.5, 2.0, 3.0),
                ["long_factor"] = new JsonArray(2.0, 4.0, 8.0, 16.0),
            },
        };
        return Parse(json);
    }

    /// <summary>
    /// transformers' _compute_longrope_parameters: inv_freq = 1 / (factor_i · θ^(2i/d)), short factors up to
    /// original_max_position_embeddings, long ones beyond; attention factor √(1 + ln(64/16) / ln 16).
    /// </summary>
    [Fact]
    public void Longrope_frequencies_and_attention_factor_follow_transformers()
    {
        var config = LongRopePhi3();
        double[] Expected(double[] f) => [.. Enumerable.Range(0, 4).Select(i => 1 / (f[i] * Math.Pow(10000, 2.0 * i / 8)))];
        var (shortInv, attention) = Rotary.Parameters(config);
        shortInv.Select(x => (double)x).Should().Equal(Expected([1, 1.5, 2, 3]), (a, b) => Math.Abs(a - b) <= 1e-6 * b);
        attention.Should().BeApproximately(Math.Sqrt(1 + Math.Log(4) / Math.Log(16)), 1e-12);
        Rotary.InverseFrequencies(config, 16).Select(x => (double)x).Should().Equal(Expected([1, 1.5, 2, 3]), (a, b) => Math.Abs(a - b) <= 1e-6 * b);
        Rotary.InverseFrequencies(config, 17).Select(x => (double)x).Should().Equal(Expected([2, 4, 8, 16]), (a, b) => Math.Abs(a - b) <= 1e-6 * b);

        var bad = (JsonObject)config.Raw.DeepClone();
        bad["rope_scaling"]!["short_factor"] = new JsonArray(1.0, 2.0);
        var act = () => Rotary.Parameters(Parse(bad));
        act.Should().Throw<InvalidDataException>().WithMessage("rope_scaling 'short_factor' must be a list of 4 numbers (rotary dimension 8 / 2) for longrope.");
    }

    /// <summary>Weights N(0, 1) instead of N(0, 0.02), so that attention is far from uniform and positions matter.</summary>
    private static CausalLm Spread(CausalLm model)
    {
        using var _ = no_grad();
        foreach (var p in model.parameters()) if (p.dim() >= 2) p.mul_(50);
        return model;
    }

    /// <summary>
    /// A sequence longer than original_max_position_embeddings switches every position to the long factors (so the
    /// first 16 logits change), and a shorter one switches back (as transformers' longrope_frequency_update).
    /// </summary>
    [Fact]
    public void Longrope_switches_to_long_factors_beyond_the_original_length_and_back()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        using var model = Spread(ModelFactory.CreateRandom(LongRopePhi3(), seed: 2));
        var ids = randint(0, 50, [1, 20], generator: new TorchSharp.torch.Generator(3));
        var shortRun = model.Forward(ids[.., ..16]);
        var longRun = model.Forward(ids);
        longRun[.., ..16].allclose(shortRun, 1e-4, 1e-4).Should().BeFalse();
        model.Forward(ids[.., ..16]).allclose(shortRun, 0, 0).Should().BeTrue();

        var plain = (JsonObject)LongRopePhi3().Raw.DeepClone();
        plain["rope_scaling"] = null;
        using var unscaled = Spread(ModelFactory.CreateRandom(Parse(plain), seed: 2));
        // Short factors of 1 at dimension 0 only: different frequencies and the attention factor change the output.
        unscaled.Forward(ids[.., ..16]).allclose(shortRun, 1e-4, 1e-4).Should().BeFalse();
    }

    /// <summary>partial_rotary_factor 0.5: only the first half of each head rotates; the rest passes through unchanged.</summary>
    [Fact]
    public void Partial_rotary_rotates_the_first_dimensions_only()
    {
        using var scope = NewDisposeScope();
        var json = (JsonObject)LongRopePhi3(headDim: 16).Raw.DeepClone();
        json["partial_rotary_factor"] = 0.5;
        var config = Parse(json);
        Rotary.RotaryDim(config).Should().Be(8);
        var (inv, _) = Rotary.Parameters(config);
        inv.Should().HaveCount(4);
        var positions = arange(5).unsqueeze(0);
        var (cos, sin) = Rotary.CosSin(inv, positions);
        var x = randn(1, 2, 5, 16, generator: new TorchSharp.torch.Generator(4));
        var y = Rotary.Apply(x, cos, sin);
        y[.., .., .., 8..].allclose(x[.., .., .., 8..], 0, 0).Should().BeTrue();
        y[.., .., .., ..8].allclose(Rotary.Apply(x[.., .., .., ..8], cos, sin), 0, 0).Should().BeTrue();
        y[.., .., 1.., ..8].allclose(x[.., .., 1.., ..8], 1e-3, 1e-3).Should().BeFalse();
    }
}
