using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Models;

/// <summary>
/// Which layers slide, as transformers 4.57 decides: Qwen2 slides only layers at or above max_window_layers when
/// use_sliding_window is true (or as its layer_types say); Mistral slides every layer whenever sliding_window is set.
/// </summary>
public class SlidingWindowTests
{
    private static ModelConfig Config(string type, JsonObject? extra = null)
    {
        var json = new JsonObject
        {
            ["model_type"] = type, ["vocab_size"] = 100, ["hidden_size"] = 32, ["num_hidden_layers"] = 2, ["num_attention_heads"] = 4,
            ["num_key_value_heads"] = 2, ["intermediate_size"] = 48, ["max_position_embeddings"] = 64, ["hidden_act"] = "silu",
            ["tie_word_embeddings"] = false,
        };
        foreach (var (k, v) in extra ?? []) json[k] = v?.DeepClone();
        return ModelConfig.Parse(json);
    }

    /// <summary>The logits of <paramref name="model"/> computed layer by layer with the given window per layer (null: full attention).</summary>
    private static Tensor LayerByLayer(LlamaForCausalLm model, Tensor ids, params int?[] windows)
    {
        var mask = ones_like(ids);
        long time = ids.shape[1];
        var positions = Attention.PositionsFromMask(mask, time);
        var (cos, sin) = new RotaryFrequencies(model.Config).CosSin(positions);
        var x = model.model.embed_tokens.forward(ids);
        for (int i = 0; i < windows.Length; i++)
            x = model.model.layers[i].forward(x, Attention.CausalMask(mask, time, x.dtype, windows[i]), cos, sin, null, i);
        return model.lm_head!.forward(model.model.norm.forward(x));
    }

    private static Tensor Ids() => arange(2 * 12, dtype: ScalarType.Int64).remainder(97).reshape(2, 12);

    [Theory]
    [InlineData(2, null, null)] // max_window_layers >= layers: no layer slides
    [InlineData(1, null, 3)]    // layer 0 full, layer 1 slides
    [InlineData(0, 3, 3)]       // every layer slides
    public void Qwen2_slides_only_the_layers_at_or_above_max_window_layers(int maxWindowLayers, int? window0, int? window1)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var config = Config("qwen2", new JsonObject { ["use_sliding_window"] = true, ["sliding_window"] = 3, ["max_window_layers"] = maxWindowLayers });
        using var model = ModelFactory.CreateRandom(config, 7);
        var ids = Ids();
        var expected = LayerByLayer((LlamaForCausalLm)model, ids, window0, window1);
        model.Forward(ids).allclose(expected, 0, 1e-6).Should().BeTrue();
        // The window matters on this input, so the test tells the cases apart.
        LayerByLayer((LlamaForCausalLm)model, ids, null, null).allclose(LayerByLayer((LlamaForCausalLm)model, ids, 3, 3), 0, 1e-4).Should().BeFalse();
    }

    [Fact]
    public void Qwen2_layer_types_in_config_json_win_over_max_window_layers()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var config = Config("qwen2", new JsonObject
        {
            ["use_sliding_window"] = true, ["sliding_window"] = 3, ["max_window_layers"] = 28,
            ["layer_types"] = new JsonArray("sliding_attention", "full_attention"),
        });
        using var model = ModelFactory.CreateRandom(config, 7);
        var ids = Ids();
        model.Forward(ids).allclose(LayerByLayer((LlamaForCausalLm)model, ids, 3, null), 0, 1e-6).Should().BeTrue();
    }

    [Fact]
    public void Qwen2_defaults_are_transformers_ones()
    {
        Config("qwen2", new JsonObject { ["use_sliding_window"] = true, ["num_hidden_layers"] = 30 }).LayerTypes.Should()
            .Equal([.. Enumerable.Repeat("full_attention", 28), "sliding_attention", "sliding_attention"]);
        Config("qwen2", new JsonObject { ["use_sliding_window"] = true }).SlidingWindow.Should().Be(4096);
        Config("qwen2", new JsonObject { ["sliding_window"] = 3, ["max_window_layers"] = 0 }).SlidingWindow.Should().BeNull();
    }

    [Fact]
    public void Qwen2_sliding_layer_types_without_a_window_are_refused_naming_the_fields()
    {
        var act = () => Config("qwen2", new JsonObject { ["layer_types"] = new JsonArray("full_attention", "sliding_attention") });
        act.Should().Throw<InvalidDataException>().Which.Message.Should().Contain("layer_types").And.Contain("use_sliding_window").And.Contain("config.json");
        var wrongCount = () => Config("qwen2", new JsonObject { ["layer_types"] = new JsonArray("full_attention") });
        wrongCount.Should().Throw<InvalidDataException>().Which.Message.Should().Contain("layer_types").And.Contain("2");
    }

    [Fact]
    public void Qwen2_window_layers_survive_a_saved_config_json()
    {
        var config = Config("qwen2", new JsonObject { ["use_sliding_window"] = true, ["sliding_window"] = 3, ["max_window_layers"] = 1 });
        var back = ModelConfig.Parse(ModelFactory.ToJson(config));
        back.LayerTypes.Should().Equal("full_attention", "sliding_attention");
        back.SlidingWindow.Should().Be(3);
    }

    [Fact]
    public void Mistral_slides_every_layer_whenever_sliding_window_is_set_and_ignores_use_sliding_window()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var config = Config("mistral", new JsonObject { ["sliding_window"] = 3, ["use_sliding_window"] = false });
        using var model = ModelFactory.CreateRandom(config, 7);
        var ids = Ids();
        model.Forward(ids).allclose(LayerByLayer((LlamaForCausalLm)model, ids, 3, 3), 0, 1e-6).Should().BeTrue();
        Config("mistral").SlidingWindow.Should().Be(4096); // MistralConfig's default when config.json has no sliding_window
        Config("mistral", new JsonObject { ["sliding_window"] = null }).SlidingWindow.Should().BeNull();
        Config("llama", new JsonObject { ["sliding_window"] = 3, ["use_sliding_window"] = true }).SlidingWindow.Should().BeNull();
    }
}
