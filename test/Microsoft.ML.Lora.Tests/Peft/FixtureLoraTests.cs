using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Peft;

/// <summary>LoRA on the real architectures against PEFT's fixtures (needs the models of branch 'models').</summary>
[Collection("TorchGlobalRng")]
public class FixtureLoraTests(ITestOutputHelper output)
{
    private static CausalLm LoadModel(string arch) => ModelLoader.Load(Fixtures.Model(arch));

    internal static JsonNode Inputs(string arch) => JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Model(arch), "inputs.json")))!;

    internal static Tensor Ids(JsonNode inputs, string name)
    {
        var rows = inputs[name]!.AsArray();
        var data = rows.SelectMany(r => r!.AsArray().Select(x => x!.GetValue<long>())).ToArray();
        return tensor(data, [rows.Count, data.Length / rows.Count]);
    }

    internal static JsonNode Trainable(string arch) => JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Model(arch), "lora", "trainable.json")))!;

    /// <summary>The fixture's LoRA recipe: r 8, alpha 16, PEFT's default targets, or "all-linear" where PEFT has none (phi3).</summary>
    internal static LoraConfig PeftConfig(string arch) => new()
    {
        R = 8,
        LoraAlpha = 16,
        TargetModules = Trainable(arch)["target_modules_requested"]?.GetValue<string>() == LoraConfig.AllLinear ? [LoraConfig.AllLinear] : null,
    };

    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    [InlineData("gemma2")]
    public void Trainable_report_and_adapter_keys_equal_peft(string arch)
    {
        using var scope = NewDisposeScope();
        var model = LoadModel(arch);
        var lm = PeftModel.GetPeftModel(model, PeftConfig(arch));
        var t = Trainable(arch);
        lm.TrainableReport().Should().Be(t["print_trainable_parameters"]!.GetValue<string>());
        var peft = t["adapter_state_dict_keys_as_saved"]!.AsObject().ToDictionary(kv => kv.Key, kv => string.Join(",", kv.Value!.AsArray().Select(x => x!.GetValue<long>())));
        lm.StateDict().ToDictionary(kv => kv.Key, kv => string.Join(",", kv.Value.shape)).Should().BeEquivalentTo(peft);
    }

    [Theory]
    [InlineData("bloom", "labels_full")]
    [InlineData("gpt2", "labels_full")]
    [InlineData("llama", "labels_full")]
    [InlineData("qwen2", "labels_full")]
    [InlineData("qwen3", "labels_full")]
    [InlineData("phi3", "labels_full")]
    [InlineData("gemma2", "labels_full")]
    [InlineData("qwen3", "labels_prompt_masked")]
    [InlineData("phi3", "labels_prompt_masked")]
    [InlineData("gemma2", "labels_prompt_masked")]
    [InlineData("gpt2", "labels_prompt_masked")]
    [InlineData("llama", "labels_prompt_masked")]
    public void Trained_peft_adapter_reproduces_adapted_and_merged_logits(string arch, string variant)
    {
        using var scope = NewDisposeScope();
        var model = LoadModel(arch);
        model.eval();
        var lm = PeftAdapterIO.Load(model, Path.Combine(Fixtures.Model(arch), "lora", variant, "adapter"));
        var inputs = Inputs(arch);
        var ids = Ids(inputs, "logits_input_ids");
        var mask = Ids(inputs, "logits_attention_mask");
        var positions = arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1); // PEFT's reference ran forward without position_ids
        using var reference = SafeTensorsFile.Open(Path.Combine(Fixtures.Model(arch), "reference.safetensors"));
        var valid = mask.unsqueeze(-1).to(ScalarType.Bool);
        double MaxErr(Tensor a, Tensor b) => (a - b).abs().masked_fill(valid.logical_not(), 0).max().item<float>();
        using (no_grad())
        {
            double adapted = MaxErr(model.Forward(ids, mask, positions), reference.Load($"{variant}.logits_adapted"));
            lm.MergeAdapter();
            double merged = MaxErr(model.Forward(ids, mask, positions), reference.Load($"{variant}.logits_merged"));
            output.WriteLine($"{arch} {variant}: adapted max abs {adapted:E3}, merged max abs {merged:E3}");
            adapted.Should().BeLessThanOrEqualTo(1e-4);
            merged.Should().BeLessThanOrEqualTo(1e-4);
        }
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void Lora_on_a_bfloat16_model_trains(string arch)
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Fixtures.Model(arch), new ModelLoadOptions { DType = ScalarType.BFloat16 });
        var lm = PeftAdapterIO.Load(model, Path.Combine(Fixtures.Model(arch), "lora", "adapter_init"));
        // PEFT's autocast_adapter_dtype: float32 adapter weights over the bfloat16 base.
        lm.Layers.Values.All(l => l.LoraA("default").dtype == ScalarType.Float32 && l.LoraB("default").dtype == ScalarType.Float32).Should().BeTrue();
        lm.Layers.Values.All(l => l.weight.dtype == ScalarType.BFloat16).Should().BeTrue();
        using var base0 = lm.Layers.Values.First().weight.detach().clone();
        var inputs = Inputs(arch);
        using var batch = new Batch(Ids(inputs, "train_input_ids"), Ids(inputs, "train_attention_mask"), Ids(inputs, "train_labels_full"), 0);
        var trainer = new Trainer(lm, new TrainingOptions { LearningRate = 1e-2, WeightDecay = 0, MaxGradNorm = 0, LrScheduler = LrSchedulerType.Constant, MaxSteps = 3 });
        var losses = Enumerable.Range(0, 3).Select(_ => trainer.Step([batch], 1e-2)).ToArray();
        output.WriteLine($"{arch} bf16 losses [{string.Join(", ", losses.Select(x => x.ToString("F4")))}]");
        losses.All(double.IsFinite).Should().BeTrue();
        losses.Should().BeInDescendingOrder();
        lm.Layers.Values.First().weight.allclose(base0, 0, 0).Should().BeTrue("the base stays frozen");
    }

    /// <summary>float16 base, float32 adapters, dynamic loss scaling (PyTorch's GradScaler): trains with the default scale.</summary>
    [Fact]
    public void Lora_on_a_float16_model_trains_with_loss_scaling()
    {
        using var scope = NewDisposeScope();
        var (lm, batch) = Float16Llama();
        var trainer = new Trainer(lm, new TrainingOptions { LearningRate = 1e-2, MaxGradNorm = 0, MaxSteps = 3 });
        var losses = Enumerable.Range(0, 3).Select(_ => trainer.Step([batch], 1e-2)).ToArray();
        output.WriteLine($"fp16 losses [{string.Join(", ", losses.Select(x => x.ToString("F4")))}], scale {trainer.Scaler!.Scale}");
        losses.Should().BeInDescendingOrder();
        trainer.Scaler.SkippedSteps.Should().Be(0);
        trainer.Scaler.Scale.Should().Be(65536);
    }

    /// <summary>A scale so large that the gradients overflow: the step is skipped, nothing moves, the scale halves and is checkpointed.</summary>
    [Fact]
    public void Overflowing_float16_step_is_skipped_and_the_scale_halved()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        var (lm, batch) = Float16Llama();
        var options = new TrainingOptions { LearningRate = 1e-2, MaxSteps = 3, InitialLossScale = 1e38 };
        var trainer = new Trainer(lm, options);
        using var a0 = lm.Layers.Values.First().LoraA("default").detach().clone();
        trainer.Step([batch], 1e-2);
        trainer.Scaler!.SkippedSteps.Should().Be(1);
        trainer.Scaler.Scale.Should().Be(5e37);
        lm.Layers.Values.First().LoraA("default").allclose(a0, 0, 0).Should().BeTrue("a skipped step leaves the adapter as it was");

        trainer.SaveCheckpoint(temp.Path, totalSteps: 3);
        var (lm2, _) = Float16Llama();
        var resumed = new Trainer(lm2, options);
        resumed.Resume(temp.Path, expectedTotalSteps: 3);
        resumed.Scaler!.Scale.Should().Be(5e37);
    }

    private (PeftModel Lm, Batch Batch) Float16Llama()
    {
        var model = ModelLoader.Load(Fixtures.Model("llama"), new ModelLoadOptions { DType = ScalarType.Float16 });
        var lm = PeftAdapterIO.Load(model, Path.Combine(Fixtures.Model("llama"), "lora", "adapter_init"));
        var inputs = Inputs("llama");
        return (lm, new Batch(Ids(inputs, "train_input_ids"), Ids(inputs, "train_attention_mask"), Ids(inputs, "train_labels_full"), 0));
    }

    [Fact]
    public void Adapters_keep_the_base_dtype_without_autocast()
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Fixtures.Model("llama"), new ModelLoadOptions { DType = ScalarType.BFloat16 });
        var lm = PeftModel.GetPeftModel(model, new LoraConfig(), autocastAdapterDtype: false);
        lm.Layers.Values.All(l => l.LoraA("default").dtype == ScalarType.BFloat16).Should().BeTrue();
        using var ids = tensor(new long[] { 1, 5, 9, 3 }).unsqueeze(0);
        using var _ = no_grad();
        lm.Model.Forward(ids).isfinite().all().item<bool>().Should().BeTrue();
    }

    [Theory]
    [InlineData("bloom", "labels_full")]
    [InlineData("bloom", "labels_prompt_masked")]
    [InlineData("gpt2", "labels_full")]
    [InlineData("gpt2", "labels_prompt_masked")]
    [InlineData("llama", "labels_full")]
    [InlineData("llama", "labels_prompt_masked")]
    [InlineData("qwen2", "labels_full")]
    [InlineData("qwen2", "labels_prompt_masked")]
    [InlineData("qwen3", "labels_full")]
    [InlineData("qwen3", "labels_prompt_masked")]
    [InlineData("phi3", "labels_full")]
    [InlineData("phi3", "labels_prompt_masked")]
    [InlineData("gemma2", "labels_full")]
    [InlineData("gemma2", "labels_prompt_masked")]
    public void Five_adamw_steps_from_adapter_init_reproduce_peft_losses_and_step0_grads(string arch, string variant)
    {
        using var scope = NewDisposeScope();
        var model = LoadModel(arch);
        var lm = PeftAdapterIO.Load(model, Path.Combine(Fixtures.Model(arch), "lora", "adapter_init"));
        var inputs = Inputs(arch);
        var labelsName = variant == "labels_full" ? "train_labels_full" : "train_labels_prompt_masked";
        using var batch = new Batch(Ids(inputs, "train_input_ids"), Ids(inputs, "train_attention_mask"), Ids(inputs, labelsName), 0);
        var trainer = new Trainer(lm, new TrainingOptions { LearningRate = 1e-3, WeightDecay = 0, MaxGradNorm = 0, LrScheduler = LrSchedulerType.Constant, MaxSteps = 5 });

        using var reference = SafeTensorsFile.Open(Path.Combine(Fixtures.Model(arch), "reference.safetensors"));
        trainer.Backward([batch]);
        double gradErr = 0;
        foreach (var (path, l) in lm.Layers)
            foreach (var (name, p) in new[] { ("lora_A", l.LoraA("default")), ("lora_B", l.LoraB("default")) })
            {
                var r = reference.Load($"{variant}.grad_step0.base_model.model.{path}.{name}.default.weight");
                gradErr = Math.Max(gradErr, (p.grad! - r).abs().max().item<float>() / Math.Max(1e-12, r.abs().max().item<float>()));
            }
        trainer.ZeroGrad();

        var expected = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Model(arch), "lora", variant, "losses.json")))!["losses"]!.AsArray().Select(x => x!.GetValue<double>()).ToArray();
        var losses = Enumerable.Range(0, 5).Select(_ => trainer.Step([batch], 1e-3)).ToArray();
        double rel = losses.Zip(expected, (a, b) => Math.Abs(a - b) / Math.Abs(b)).Max();
        output.WriteLine($"{arch} {variant}: losses [{string.Join(", ", losses.Select(x => x.ToString("F6")))}], max rel err {rel:E3}; step-0 grad max rel err {gradErr:E3}");
        rel.Should().BeLessThanOrEqualTo(1e-4);
        gradErr.Should().BeLessThanOrEqualTo(1e-3);
    }

    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("phi3")]
    [InlineData("gemma2")]
    public void Peft_adapter_loads_and_saves_back_with_identical_keys_and_tensors(string arch)
    {
        using var scope = NewDisposeScope();
        var source = Path.Combine(Fixtures.Model(arch), "lora", "labels_full", "adapter");
        var lm = PeftAdapterIO.Load(LoadModel(arch), source);
        using var temp = new TempFolder();
        var dir = temp.Path;
        PeftAdapterIO.Save(lm, dir);
        using var ours = SafeTensorsFile.Open(Path.Combine(dir, "adapter_model.safetensors"));
        using var peft = SafeTensorsFile.Open(Path.Combine(source, "adapter_model.safetensors"));
        ours.Tensors.Select(t => t.Name).Should().BeEquivalentTo(peft.Tensors.Select(t => t.Name));
        foreach (var t in peft.Tensors) ours.ReadBytes(t.Name).Should().Equal(peft.ReadBytes(t.Name), t.Name);
        var cfg = PeftAdapterIO.ReadConfig(dir);
        var peftCfg = PeftAdapterIO.ReadConfig(source);
        cfg.Should().BeEquivalentTo(peftCfg with { InferenceMode = true });
    }
}
