using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Peft;

[Collection("TorchGlobalRng")]
public class LoraModelTests
{
    private static readonly LoraConfig R8 = new() { R = 8, LoraAlpha = 16 };

    [Fact]
    public void Applies_default_gpt2_target_and_reports_like_peft()
    {
        using var scope = NewDisposeScope();
        var lm = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8);
        lm.Layers.Keys.Should().Equal("transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn");
        lm.Config.FanInFanOut.Should().BeTrue("GPT-2's c_attn is a Conv1D; PEFT switches fan_in_fan_out on");
        lm.GetNbTrainableParameters().Should().Be((2048L, 31360L));
        lm.TrainableReport().Should().Be("trainable params: 2,048 || all params: 31,360 || trainable%: 6.5306");
        lm.TrainableParameters().Select(p => p.Name).Should().Equal(
            "transformer.h.0.attn.c_attn.lora_A.default.weight", "transformer.h.0.attn.c_attn.lora_B.default.weight",
            "transformer.h.1.attn.c_attn.lora_A.default.weight", "transformer.h.1.attn.c_attn.lora_B.default.weight");
    }

    [Fact]
    public void All_linear_excludes_lm_head_and_layers_to_transform_filters_suffix_names()
    {
        using var scope = NewDisposeScope();
        var lm = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { TargetModules = [LoraConfig.AllLinear] });
        lm.Layers.Should().HaveCount(8).And.NotContainKey("lm_head");
        // all-linear is a string in PEFT, which refuses layers_to_transform with it (TargetSelectionTests); names filter
        PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { TargetModules = ["c_attn", "c_proj", "c_fc"], LayersToTransform = [1] }).Layers.Keys
            .Should().Equal("transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj");
        // suffix "c_proj" matches both attention and MLP projections, as in PEFT
        PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { TargetModules = ["c_proj"] }).Layers.Should().HaveCount(4);
    }

    [Fact]
    public void Missing_target_lists_linear_modules()
    {
        using var scope = NewDisposeScope();
        var act = () => PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { TargetModules = ["q_proj"] });
        act.Should().Throw<ArgumentException>().WithMessage(
            "Target modules [q_proj] not found in the gpt2 model. Its linear modules are: lm_head, transformer.h.N.attn.c_attn, transformer.h.N.attn.c_proj, transformer.h.N.mlp.c_fc, transformer.h.N.mlp.c_proj.");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-4)]
    public void Rank_must_be_positive(int r)
    {
        var act = () => LoraModel.SelectTargets(["a.c_attn"], new LoraConfig { R = r }, "gpt2");
        act.Should().Throw<ArgumentException>().WithMessage($"LoraConfig.R (r) must be a positive integer, got {r}.");
    }

    [Fact]
    public void Bloom_7b1_r16_count_from_config_alone()
    {
        var cfg = new ModelConfig { ModelType = "bloom", VocabSize = 250880, HiddenSize = 4096, NumLayers = 30, NumHeads = 32, NumKeyValueHeads = 32, HeadDim = 128, IntermediateSize = 16384 };
        LoraParameterCount.Trainable(cfg, new LoraConfig { R = 16 }).Should().Be(7_864_320);
    }

    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    [InlineData("gemma2")]
    public void Count_and_adapter_keys_from_config_equal_peft(string arch)
    {
        var cfg = ModelConfig.Load(Path.Combine(Fixtures.Model(arch), "config.json"));
        var t = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Model(arch), "lora", "trainable.json")))!;
        var lora = FixtureLoraTests.PeftConfig(arch);
        LoraParameterCount.Trainable(cfg, lora).Should().Be(t["trainable_params"]!.GetValue<long>());
        var linears = LoraParameterCount.AllLinears(cfg);
        var selected = LoraModel.SelectTargets(linears.Select(l => l.Path), lora, cfg.ModelType).ToHashSet();
        var keys = new Dictionary<string, long[]>();
        foreach (var (p, i, o) in linears.Where(l => selected.Contains(l.Path)))
        {
            keys[$"base_model.model.{p}.lora_A.weight"] = [8, i];
            keys[$"base_model.model.{p}.lora_B.weight"] = [o, 8];
        }
        var peft = t["adapter_state_dict_keys_as_saved"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.AsArray().Select(x => x!.GetValue<long>()).ToArray());
        keys.Should().BeEquivalentTo(peft);
    }

    [Fact]
    public void Merge_disable_and_merge_and_unload_keep_outputs()
    {
        using var scope = NewDisposeScope();
        var model = new TinyLm(TinyLm.MakeConfig());
        var ids = randint(0, 64, [2, 7]);
        var baseLogits = model.Forward(ids).detach();
        var lm = PeftModel.GetPeftModel(model, R8 with { InitLoraWeights = LoraInit.Random, TargetModules = [LoraConfig.AllLinear] });
        var adapted = model.Forward(ids).detach();
        (adapted - baseLogits).abs().max().item<float>().Should().BeGreaterThan(1e-2f);
        using (lm.DisableAdapter()) (model.Forward(ids) - baseLogits).abs().max().item<float>().Should().BeLessThan(1e-5f);
        lm.MergeAdapter();
        (model.Forward(ids) - adapted).abs().max().item<float>().Should().BeLessThan(1e-4f);
        lm.UnmergeAdapter();
        var unloaded = lm.MergeAndUnload();
        unloaded.named_parameters().Select(p => p.name).Should().NotContain(n => n.Contains("lora_") || n.Contains("base_layer"));
        (unloaded.Forward(ids) - adapted).abs().max().item<float>().Should().BeLessThan(1e-4f);
    }

    [Fact]
    public void Save_load_round_trip_with_peft_names_and_config()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        var dir = temp.Path;
        var lm = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { InitLoraWeights = LoraInit.Random, BaseModelNameOrPath = "tiny" });
        PeftAdapterIO.Save(lm, dir);
        using (var f = Microsoft.ML.Lora.Checkpoints.SafeTensorsFile.Open(Path.Combine(dir, "adapter_model.safetensors")))
        {
            f.Tensors.Select(t => (t.Name, string.Join(",", t.Shape))).Should().BeEquivalentTo(new[]
            {
                ("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", "8,32"), ("base_model.model.transformer.h.0.attn.c_attn.lora_B.weight", "96,8"),
                ("base_model.model.transformer.h.1.attn.c_attn.lora_A.weight", "8,32"), ("base_model.model.transformer.h.1.attn.c_attn.lora_B.weight", "96,8"),
            });
            f.Metadata.Should().Equal(new Dictionary<string, string> { ["format"] = "pt" });
        }
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!;
        json["peft_type"]!.GetValue<string>().Should().Be("LORA");
        json["task_type"]!.GetValue<string>().Should().Be("CAUSAL_LM");
        json["r"]!.GetValue<int>().Should().Be(8);
        json["lora_alpha"]!.GetValue<int>().Should().Be(16);
        json["fan_in_fan_out"]!.GetValue<bool>().Should().BeTrue();
        json["target_modules"]!.AsArray().Select(x => x!.GetValue<string>()).Should().Equal("c_attn");
        json["base_model_name_or_path"]!.GetValue<string>().Should().Be("tiny");

        var other = PeftAdapterIO.Load(new TinyLm(TinyLm.MakeConfig(), seed: 1), dir);
        other.Config.R.Should().Be(8);
        foreach (var (path, l) in lm.Layers)
        {
            other.Layers[path].LoraA("default").allclose(l.LoraA("default"), 0, 0).Should().BeTrue();
            other.Layers[path].LoraB("default").allclose(l.LoraB("default"), 0, 0).Should().BeTrue();
        }
    }

    [Fact]
    public void Loading_wrong_rank_or_missing_keys_fails_clearly_and_failed_save_keeps_previous()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        var dir = temp.Path;
        var lm = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { InitLoraWeights = LoraInit.Random });
        PeftAdapterIO.Save(lm, dir);
        var before = File.ReadAllBytes(Path.Combine(dir, "adapter_model.safetensors"));

        var r4 = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { R = 4 });
        var act = () => PeftAdapterIO.LoadWeights(r4, dir);
        act.Should().Throw<AdapterLoadException>().WithMessage("*'base_model.model.transformer.h.0.attn.c_attn.lora_A.weight' has shape [8, 32], the model expects [4, 32]*")
            .Which.TensorName.Should().Be("base_model.model.transformer.h.0.attn.c_attn.lora_A.weight");
        var allLinear = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { TargetModules = ["c_attn", "c_fc"] });
        act = () => PeftAdapterIO.LoadWeights(allLinear, dir);
        act.Should().Throw<AdapterLoadException>().WithMessage("*missing 4 key(s) (first: base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight)*")
            .Which.FilePath.Should().Be(Path.Combine(dir, "adapter_model.safetensors"));

        using (no_grad()) lm.Layers.Values.First().LoraA("default").add_(1);
        PeftAdapterIO.BeforeCommit = _ => throw new IOException("disk full");
        try { ((Action)(() => PeftAdapterIO.Save(lm, dir))).Should().Throw<IOException>(); }
        finally { PeftAdapterIO.BeforeCommit = null; }
        File.ReadAllBytes(Path.Combine(dir, "adapter_model.safetensors")).Should().Equal(before);
        Directory.GetFiles(dir).Select(Path.GetFileName).Should().BeEquivalentTo("adapter_model.safetensors", "adapter_config.json");
    }

    [Fact]
    public void Modules_to_save_and_bias_all_are_trained_and_saved()
    {
        using var scope = NewDisposeScope();
        var lm = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { ModulesToSave = ["lm_head"] });
        lm.GetNbTrainableParameters().Trainable.Should().Be(2048 + 64 * 32);
        lm.StateDict().Keys.Should().Contain("base_model.model.lm_head.weight").And.HaveCount(5);
        var all = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { Bias = "all" });
        // biases: per block c_attn 96 + c_proj 32 + c_fc 128 + c_proj 32, plus ln_f 32
        all.GetNbTrainableParameters().Trainable.Should().Be(2048 + 2 * (96 + 32 + 128 + 32) + 32);
    }
}
