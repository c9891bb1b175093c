using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Peft;

/// <summary>adapter_config.json fields beyond the basic ones: rank/alpha patterns, bias modes, and fields not implemented.</summary>
[Collection("TorchGlobalRng")]
public sealed class AdapterConfigFieldTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("mllora-adaptercfg-");

    public void Dispose() => _dir.Delete(true);

    private static CausalLm Llama() => ModelLoader.Load(Fixtures.Model("llama"));

    private const string Q0 = "base_model.model.model.layers.0.self_attn.q_proj", V0 = "base_model.model.model.layers.0.self_attn.v_proj";
    private const string Q1 = "base_model.model.model.layers.1.self_attn.q_proj", V1 = "base_model.model.model.layers.1.self_attn.v_proj";

    /// <summary>Writes a PEFT-style adapter for llama's q_proj/v_proj with rank <paramref name="ranks"/>[key] per layer.</summary>
    private Dictionary<string, Tensor> WriteAdapter(JsonObject config, Dictionary<string, int> ranks)
    {
        var tensors = new Dictionary<string, Tensor>();
        foreach (var (layer, r) in ranks)
        {
            long outF = layer.EndsWith("v_proj", StringComparison.Ordinal) ? 32 : 64;
            tensors[$"{layer}.lora_A.weight"] = randn(r, 64);
            tensors[$"{layer}.lora_B.weight"] = randn(outF, r);
        }
        SafeTensorsWriter.Save(Path.Combine(_dir.FullName, "adapter_model.safetensors"), tensors.Select(kv => KeyValuePair.Create(kv.Key, kv.Value)),
            new Dictionary<string, string> { ["format"] = "pt" });
        var json = new JsonObject { ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["r"] = 8, ["lora_alpha"] = 16, ["target_modules"] = new JsonArray("q_proj", "v_proj"), ["bias"] = "none" };
        foreach (var (k, v) in config) json[k] = v?.DeepClone();
        File.WriteAllText(Path.Combine(_dir.FullName, "adapter_config.json"), json.ToJsonString());
        return tensors;
    }

    [Fact]
    public void Rank_and_alpha_patterns_of_a_peft_adapter_set_r_and_scaling_per_module()
    {
        using var scope = NewDisposeScope();
        // PEFT's get_pattern_key: the first key matching the end of the path at a dot boundary, in order.
        var tensors = WriteAdapter(new JsonObject
        {
            ["rank_pattern"] = new JsonObject { ["layers.1.self_attn.q_proj"] = 4, ["v_proj"] = 2 },
            ["alpha_pattern"] = new JsonObject { ["model.layers.0.self_attn.q_proj"] = 32, ["q_proj"] = 1 },
        }, new() { [Q0] = 8, [V0] = 2, [Q1] = 4, [V1] = 2 });
        var lm = PeftAdapterIO.Load(Llama(), _dir.FullName);
        var l = lm.Layers;
        (l["model.layers.0.self_attn.q_proj"].LoraA("default").shape[0], l["model.layers.0.self_attn.q_proj"].Scaling("default")).Should().Be((8L, 32.0 / 8));
        (l["model.layers.1.self_attn.q_proj"].LoraA("default").shape[0], l["model.layers.1.self_attn.q_proj"].Scaling("default")).Should().Be((4L, 1.0 / 4));
        (l["model.layers.0.self_attn.v_proj"].LoraA("default").shape[0], l["model.layers.0.self_attn.v_proj"].Scaling("default")).Should().Be((2L, 16.0 / 2));
        l["model.layers.1.self_attn.q_proj"].LoraB("default").allclose(tensors[$"{Q1}.lora_B.weight"]).Should().BeTrue();

        // Written back as read, so PEFT rebuilds the same shapes.
        PeftAdapterIO.Save(lm, Path.Combine(_dir.FullName, "again"));
        var again = JsonNode.Parse(File.ReadAllText(Path.Combine(_dir.FullName, "again", "adapter_config.json")))!;
        again["rank_pattern"]!.ToJsonString().Should().Be("""{"layers.1.self_attn.q_proj":4,"v_proj":2}""");
        again["alpha_pattern"]!.ToJsonString().Should().Be("""{"model.layers.0.self_attn.q_proj":32,"q_proj":1}""");
    }

    [Fact]
    public void Bias_lora_only_trains_the_adapted_biases_and_saves_only_lora_keys_as_peft()
    {
        using var scope = NewDisposeScope();
        var qwen = ModelLoader.Load(Fixtures.Model("qwen2")); // q/k/v have biases
        var lm = PeftModel.GetPeftModel(qwen, new LoraConfig { R = 8, LoraAlpha = 16, Bias = "lora_only" });
        lm.TrainableParameters().Select(p => p.Name).Where(n => n.Contains("bias")).Should().BeEquivalentTo(
            "model.layers.0.self_attn.q_proj.base_layer.bias", "model.layers.0.self_attn.v_proj.base_layer.bias",
            "model.layers.1.self_attn.q_proj.base_layer.bias", "model.layers.1.self_attn.v_proj.base_layer.bias");
        PeftAdapterIO.Save(lm, _dir.FullName);
        using (var file = SafeTensorsFile.Open(Path.Combine(_dir.FullName, "adapter_model.safetensors")))
            file.Tensors.Select(t => t.Name).Should().OnlyContain(n => n.Contains(".lora_"));
        // An adapter PEFT wrote with bias="lora_only" (LoRA keys only) loads.
        var reloaded = PeftAdapterIO.Load(ModelLoader.Load(Fixtures.Model("qwen2")), _dir.FullName);
        reloaded.Config.Bias.Should().Be("lora_only");
    }

    [Fact]
    public void Bias_all_saves_every_bias_under_its_peft_key_and_loads_it_into_the_model()
    {
        using var scope = NewDisposeScope();
        var lm = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("qwen2")), new LoraConfig { R = 8, LoraAlpha = 16, Bias = "all" });
        var state = lm.StateDict();
        state.Keys.Where(k => k.Contains("bias")).Should().BeEquivalentTo(
            Enumerable.Range(0, 2).SelectMany(i => new[]
            {
                $"base_model.model.model.layers.{i}.self_attn.q_proj.base_layer.bias", $"base_model.model.model.layers.{i}.self_attn.k_proj.bias",
                $"base_model.model.model.layers.{i}.self_attn.v_proj.base_layer.bias",
            }));
        using (no_grad()) state["base_model.model.model.layers.1.self_attn.k_proj.bias"].fill_(0.25f);
        PeftAdapterIO.Save(lm, _dir.FullName);
        var reloaded = PeftAdapterIO.Load(ModelLoader.Load(Fixtures.Model("qwen2")), _dir.FullName);
        reloaded.StateDict()["base_model.model.model.layers.1.self_attn.k_proj.bias"].eq(0.25f).all().item<bool>().Should().BeTrue();
    }

    [Theory]
    [InlineData("layer_replication", "[[0, 1], [0, 2]]")]
    [InlineData("megatron_config", """{"tensor_model_parallel_size": 2}""")]
    [InlineData("lora_bias", "true")]
    [InlineData("target_parameters", """["mlp.experts.down_proj"]""")]
    [InlineData("init_lora_weights", "\"pissa\"")]
    [InlineData("task_type", "\"SEQ_CLS\"")]
    [InlineData("some_future_field", "\"on\"")]
    public void A_field_that_is_not_implemented_is_refused_naming_it(string field, string value)
    {
        WriteAdapter(new JsonObject { [field] = JsonNode.Parse(value) }, new() { [Q0] = 8, [V0] = 8, [Q1] = 8, [V1] = 8 });
        var act = () => PeftAdapterIO.Load(Llama(), _dir.FullName);
        act.Should().Throw<NotSupportedException>().Which.Message.Should().Contain(field).And.Contain("adapter_config.json");
    }

    [Theory]
    [InlineData("layer_replication", "null")]
    [InlineData("megatron_config", "null")]
    [InlineData("loftq_config", "{}")]
    [InlineData("use_qalora", "false")]
    [InlineData("some_future_field", "null")]
    [InlineData("another_future_field", "false")]
    public void Such_fields_at_their_default_are_accepted(string field, string value)
    {
        using var scope = NewDisposeScope();
        WriteAdapter(new JsonObject { [field] = JsonNode.Parse(value) }, new() { [Q0] = 8, [V0] = 8, [Q1] = 8, [V1] = 8 });
        PeftAdapterIO.Load(Llama(), _dir.FullName).Layers.Should().HaveCount(4);
    }
}
