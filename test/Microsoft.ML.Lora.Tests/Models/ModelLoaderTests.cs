using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Models;

public sealed class ModelLoaderTests : IDisposable
{
    private readonly TempFolder _temp = new();
    private string _dir => _temp.Path;

    public void Dispose() => _temp.Dispose();

    /// <summary>Copies a fixture's config.json and rewrites its weights through <paramref name="edit"/>.</summary>
    private string Edited(string arch, Action<Dictionary<string, Tensor>> edit)
    {
        File.Copy(Path.Combine(Fixtures.Model(arch), "config.json"), Path.Combine(_dir, "config.json"), overwrite: true);
        using var file = SafeTensorsFile.Open(Path.Combine(Fixtures.Model(arch), "model.safetensors"));
        var tensors = file.Tensors.ToDictionary(t => t.Name, t => file.Load(t.Name));
        edit(tensors);
        SafeTensorsWriter.Save(Path.Combine(_dir, "model.safetensors"), tensors);
        return _dir;
    }

    private static string LayerTensor(string arch) => arch switch
    {
        "gpt2" => "transformer.h.1.attn.c_attn.weight",
        "bloom" => "transformer.h.1.self_attention.query_key_value.weight",
        "phi3" => "model.layers.1.self_attn.qkv_proj.weight",
        _ => "model.layers.1.self_attn.q_proj.weight",
    };

    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    [InlineData("gemma2")]
    public void Missing_tensor_is_named(string arch)
    {
        using var scope = NewDisposeScope();
        string name = LayerTensor(arch);
        var act = () => ModelLoader.Load(Edited(arch, t => t.Remove(name)));
        act.Should().Throw<CheckpointMismatchException>().WithMessage($"*missing*'{name}'*").Which.Missing.Should().Equal(name);
    }

    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    [InlineData("gemma2")]
    public void Unexpected_tensor_is_named(string arch)
    {
        using var scope = NewDisposeScope();
        var act = () => ModelLoader.Load(Edited(arch, t => t["extra.thing.weight"] = zeros(3)));
        act.Should().Throw<CheckpointMismatchException>().WithMessage("*unexpected*'extra.thing.weight'*")
            .Which.Unexpected.Should().Equal("extra.thing.weight");
    }

    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    [InlineData("gemma2")]
    public void Shape_mismatch_is_named_with_both_shapes(string arch)
    {
        using var scope = NewDisposeScope();
        string name = LayerTensor(arch);
        var act = () => ModelLoader.Load(Edited(arch, t => t[name] = t[name][..^1]));
        var e = act.Should().Throw<CheckpointMismatchException>().Which;
        e.ShapeMismatches.Should().ContainSingle().Which.Should().Contain(name);
        e.Message.Should().Contain(name).And.Contain("expects [").And.Contain("checkpoint has [");
    }

    [Fact]
    public void Old_gpt2_buffers_and_tied_lm_head_are_accepted()
    {
        using var scope = NewDisposeScope();
        var folder = Edited("gpt2", t =>
        {
            t["transformer.h.0.attn.bias"] = ones(1, 1, 4, 4);
            t["transformer.h.0.attn.masked_bias"] = tensor(-1e4f);
            t["lm_head.weight"] = t["transformer.wte.weight"];
        });
        using var model = ModelLoader.Load(folder);
        model.Config.ModelType.Should().Be("gpt2");
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void Sharded_checkpoint_loads_like_the_single_file(string arch)
    {
        using var scope = NewDisposeScope();
        File.Copy(Path.Combine(Fixtures.Model(arch), "config.json"), Path.Combine(_dir, "config.json"));
        using (var file = SafeTensorsFile.Open(Path.Combine(Fixtures.Model(arch), "model.safetensors")))
        {
            var names = file.Tensors.Select(t => t.Name).ToList();
            var shards = new[] { names.Where((_, i) => i % 2 == 0).ToList(), names.Where((_, i) => i % 2 == 1).ToList() };
            var map = new System.Text.Json.Nodes.JsonObject();
            for (int s = 0; s < 2; s++)
            {
                string shard = $"model-0000{s + 1}-of-00002.safetensors";
                SafeTensorsWriter.Save(Path.Combine(_dir, shard), shards[s].Select(n => KeyValuePair.Create(n, file.Load(n))));
                foreach (var n in shards[s]) map[n] = shard;
            }
            var index = new System.Text.Json.Nodes.JsonObject { ["metadata"] = new System.Text.Json.Nodes.JsonObject(), ["weight_map"] = map };
            File.WriteAllText(Path.Combine(_dir, CheckpointFolder.IndexFile), index.ToJsonString());
        }
        using var sharded = ModelLoader.Load(_dir);
        using var single = ModelLoader.Load(Fixtures.Model(arch));
        using var _ = no_grad();
        var ids = ModelFixtureTests.Ref(arch, "logits_input_ids");
        var mask = ModelFixtureTests.Ref(arch, "logits_attention_mask");
        sharded.Forward(ids, mask).allclose(single.Forward(ids, mask), 0, 0).Should().BeTrue();
    }

    [Fact]
    public void Cuda_request_without_cuda_fails_clearly()
    {
        if (cuda.is_available()) return;
        var act = () => ModelLoader.Load(Fixtures.Model("gpt2"), new ModelLoadOptions { Device = "cuda" });
        act.Should().Throw<InvalidOperationException>().WithMessage("*CUDA is not available*");
    }

    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    [InlineData("gemma2")]
    public void Random_model_saves_and_loads_back(string arch)
    {
        using var scope = NewDisposeScope();
        var config = ModelConfig.Load(Path.Combine(Fixtures.Model(arch), "config.json"));
        using var model = ModelFactory.CreateRandom(config, seed: 3);
        ModelFactory.Save(model, _dir);
        using var loaded = ModelLoader.Load(_dir);
        loaded.Config.Should().BeEquivalentTo(config, o => o.Excluding(c => c.Raw));
        using var _ = no_grad();
        var ids = ModelFixtureTests.Ref(arch, "logits_input_ids");
        loaded.Forward(ids).allclose(model.Forward(ids), 0, 0).Should().BeTrue();
        using var again = ModelFactory.CreateRandom(config, seed: 3);
        again.Forward(ids).allclose(model.Forward(ids), 0, 0).Should().BeTrue();
    }
}
