using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Quantization;
using Microsoft.ML.Lora.Training;
using Xunit.Abstractions;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Quantization;

/// <summary>
/// The tiny LLaMA as transformers + bitsandbytes save it pre-quantized (NF4, double quant), quantized while loading,
/// and QLoRA on top, against shared/fixtures/quant/llama-nf4.
/// </summary>
public class QuantizedModelTests(ITestOutputHelper output)
{
    private static string Nf4Folder => Path.Combine(Fixtures.Root, "quant", "llama-nf4");

    private static SafeTensorsFile Reference() => SafeTensorsFile.Open(Path.Combine(Nf4Folder, "reference.safetensors"));

    private static readonly string[] s_quantized =
        [.. Enumerable.Range(0, 2).SelectMany(l => new[] { "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj" }.Select(m => $"model.layers.{l}.{m}"))];

    private static BitsAndBytesConfig Nf4DoubleQuant => new() { LoadIn4bit = true, Bnb4bitQuantType = "nf4", Bnb4bitUseDoubleQuant = true };

    private static Dictionary<string, nn.Module> Modules(CausalLm model) => model.named_modules().ToDictionary(m => m.name, m => m.module);

    private static void ExpectNf4Model(CausalLm model, SafeTensorsFile reference)
    {
        var modules = Modules(model);
        modules.Values.OfType<Linear4bit>().Should().HaveCount(14);
        modules["lm_head"].Should().BeOfType<Microsoft.ML.Lora.Models.Layers.Linear>("transformers keeps the output embedding in full precision");
        foreach (var path in s_quantized)
        {
            var layer = modules[path].Should().BeOfType<Linear4bit>().Subject;
            using var w = layer.DequantizeWeight();
            using var expected = reference.Load($"dequantized.{path}.weight");
            w.dtype.Should().Be(ScalarType.Float32);
            w.allclose(expected, 0, 0).Should().BeTrue($"{path} dequantizes bit for bit to the reference");
        }
    }

    private double LogitsError(CausalLm model, SafeTensorsFile reference, string key)
    {
        using var scope = NewDisposeScope();
        var ids = reference.Load("logits_input_ids");
        var mask = reference.Load("logits_attention_mask");
        var positions = arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1); // the reference ran forward without position_ids
        using var _ = no_grad();
        var valid = mask.unsqueeze(-1).to(ScalarType.Bool);
        var error = (model.Forward(ids, mask, positions) - reference.Load(key)).abs().masked_fill(valid.logical_not(), 0).max().item<float>();
        output.WriteLine($"{key}: max abs error {error:E3}");
        return error;
    }

    [Fact]
    public void Pre_quantized_checkpoint_loads_and_reproduces_its_logits()
    {
        using var model = ModelLoader.Load(Nf4Folder);
        using var reference = Reference();
        ExpectNf4Model(model, reference);
        LogitsError(model, reference, "logits_nf4").Should().BeLessThanOrEqualTo(1e-4);
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(Nf4Folder, "meta.json")))!["layers"]!;
        foreach (var path in s_quantized)
            ((Linear4bit)Modules(model)[path]).State.ToJson().Should().Be(json[path]!["quant_state_json"]!.GetValue<string>());
    }

    [Fact]
    public void Float_checkpoint_quantized_while_loading_equals_the_pre_quantized_one()
    {
        using var model = ModelLoader.Load(Fixtures.Model("llama"), new ModelLoadOptions { QuantizationConfig = Nf4DoubleQuant });
        using var reference = Reference();
        ExpectNf4Model(model, reference);
        LogitsError(model, reference, "logits_nf4").Should().BeLessThanOrEqualTo(1e-4);
        // The state dict is what bitsandbytes writes: the pre-quantized checkpoint's tensors, byte for byte.
        using var checkpoint = SafeTensorsFile.Open(Path.Combine(Nf4Folder, "model.safetensors"));
        foreach (var path in s_quantized)
            foreach (var (key, value) in ((Linear4bit)Modules(model)[path]).QuantizedStateDict())
            {
                using var stored = checkpoint.Load($"{path}.{key}");
                value.allclose(stored, 0, 0).Should().BeTrue($"{path}.{key} equals the pre-quantized checkpoint");
            }
    }

    private static (PeftModel Lm, Batch Batch) QLoraSetup(CausalLm model, SafeTensorsFile reference)
    {
        var lm = PeftAdapterIO.Load(model, Path.Combine(Nf4Folder, "qlora", "adapter_init"));
        var batch = new Batch(reference.Load("train_input_ids"), reference.Load("train_attention_mask"), reference.Load("train_labels_full"), 0);
        return (lm, batch);
    }

    [Fact]
    public void QLoRA_steps_reproduce_the_reference_and_the_adapter_loads_on_the_unquantized_base()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        var model = ModelLoader.Load(Nf4Folder);
        using var reference = Reference();
        var (lm, batch) = QLoraSetup(model, reference);
        lm.Layers.Values.Should().OnlyContain(l => l.BaseLayer is Linear4bit && l.LoraA("default").dtype == ScalarType.Float32);
        var trainer = new Trainer(lm, new TrainingOptions { LearningRate = 1e-3, WeightDecay = 0, MaxGradNorm = 0, LrScheduler = LrSchedulerType.Constant, MaxSteps = 3 });
        var expected = JsonNode.Parse(File.ReadAllText(Path.Combine(Nf4Folder, "qlora", "losses.json")))!["losses"]!.AsArray().Select(x => x!.GetValue<double>()).ToArray();
        var losses = Enumerable.Range(0, 3).Select(_ => trainer.Step([batch], 1e-3)).ToArray();
        output.WriteLine($"QLoRA losses [{string.Join(", ", losses.Select(x => x.ToString("R")))}], reference [{string.Join(", ", expected)}]");
        for (int i = 0; i < 3; i++) Math.Abs(losses[i] - expected[i]).Should().BeLessThanOrEqualTo(1e-5 * expected[i], $"step {i}");
        lm.Model.eval();
        LogitsError(lm.Model, reference, "qlora.logits_trained").Should().BeLessThanOrEqualTo(1e-4);

        // An ordinary PEFT adapter: the keys and shapes of PEFT's, its values PEFT's trained ones, and it loads on the float base.
        PeftAdapterIO.Save(lm, temp.Path);
        using var peft = SafeTensorsFile.Open(Path.Combine(Nf4Folder, "qlora", "adapter", "adapter_model.safetensors"));
        using var ours = SafeTensorsFile.Open(Path.Combine(temp.Path, "adapter_model.safetensors"));
        ours.Tensors.Select(t => (t.Name, string.Join(",", t.Shape))).Should().BeEquivalentTo(peft.Tensors.Select(t => (t.Name, string.Join(",", t.Shape))));
        foreach (var t in peft.Tensors)
            (ours.Load(t.Name) - peft.Load(t.Name)).abs().max().item<float>().Should().BeLessThanOrEqualTo(1e-5f, t.Name);
        var floatBase = ModelLoader.Load(Fixtures.Model("llama"));
        var served = PeftAdapterIO.Load(floatBase, temp.Path);
        served.Layers.Values.Should().OnlyContain(l => l.BaseLayer is Microsoft.ML.Lora.Models.Layers.Linear);
        foreach (var (path, layer) in served.Layers)
            layer.LoraB("default").allclose(lm.Layers[path].LoraB("default"), 0, 0).Should().BeTrue(path);
        model.Dispose();
        floatBase.Dispose();
    }

    [Fact]
    public void Gradients_of_the_first_QLoRA_step_equal_the_reference()
    {
        using var scope = NewDisposeScope();
        using var model = ModelLoader.Load(Nf4Folder);
        using var reference = Reference();
        var (lm, batch) = QLoraSetup(model, reference);
        lm.Model.train();
        var logits = lm.Model.Forward(batch.InputIds, batch.AttentionMask);
        var loss = CausalLmLoss.Mean(logits, batch.Labels);
        loss.backward();
        foreach (var (path, layer) in lm.Layers)
            foreach (var (name, p) in new[] { ("lora_A", layer.LoraA("default")), ("lora_B", layer.LoraB("default")) })
            {
                using var expected = reference.Load($"qlora.grad_step0.base_model.model.{path}.{name}.default.weight");
                var error = (p.grad! - expected).abs().max().item<float>();
                var scale = expected.abs().max().item<float>();
                error.Should().BeLessThanOrEqualTo(1e-4f * Math.Max(scale, 1e-6f), $"{path}.{name}");
            }
        foreach (var l in lm.Layers.Values) ((Linear4bit)l.BaseLayer).weight.grad.Should().BeNull("the frozen 4-bit weight never gets a gradient");
    }
}
