using System.IO.Compression;
using System.Text.Json.Nodes;
using Microsoft.ML.Data;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Quantization;
using Microsoft.ML.Lora.Tests.MLNet;
using Microsoft.ML.Lora.Tests.PeftMethods;
using Microsoft.ML.Lora.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Quantization;

/// <summary>
/// DoRA over a quantized base (PEFT's DoraLinearLayer with dequantize_module_weight, and its bnb merge), on the tiny
/// LLaMA quantized while loading (LLM.int8; NF4 with double quant) against an independent reference: the float model
/// whose linears hold exactly the dequantized weights, with the same DoRA config and seed. Whatever the quantized layers
/// do must then be what the float layers do, and a merge must be quantize(the reference's merged float weight).
/// </summary>
public sealed class DoraQuantizedTests(ITestOutputHelper output)
{
    private static readonly LoraConfig Dora = new()
    {
        R = 4, LoraAlpha = 8, LoraDropout = 0.1, UseDora = true, TargetModules = ["q_proj", "v_proj", "up_proj", "down_proj"],
    };

    public static TheoryData<string> Kinds => new() { "int8", "nf4_dq" };

    private static BitsAndBytesConfig Config(string kind) => kind == "int8"
        ? new BitsAndBytesConfig { LoadIn8bit = true }
        : new BitsAndBytesConfig { LoadIn4bit = true, Bnb4bitQuantType = "nf4", Bnb4bitUseDoubleQuant = true };

    /// <summary>quantize then dequantize <paramref name="w"/> as the quantized layer of <paramref name="kind"/> does.</summary>
    private static Tensor Requantized(string kind, Tensor w)
    {
        if (kind == "int8")
        {
            var (q, scb) = Int8Weight.Quantize(w);
            using (q) using (scb) return Int8Weight.Dequantize(q, scb);
        }
        using var state = QuantState4Bit.Quantize(w, "nf4", doubleQuant: true);
        return state.Dequantize();
    }

    private static Dictionary<string, nn.Module> Modules(CausalLm model) => model.named_modules().ToDictionary(m => m.name, m => m.module);

    /// <summary>The quantized model and the float one whose linears hold its dequantized weights.</summary>
    private static (CausalLm Quantized, CausalLm Reference) Build(string kind)
    {
        var quantized = ModelLoader.Load(Fixtures.Model("llama"), new ModelLoadOptions { QuantizationConfig = Config(kind) });
        var reference = ModelLoader.Load(Fixtures.Model("llama"));
        var floats = Modules(reference);
        int copied = 0;
        using (no_grad())
            foreach (var (path, module) in Modules(quantized))
                if (module is IQuantizedLinear q)
                {
                    using var w = q.DequantizeWeight();
                    var target = (Microsoft.ML.Lora.Models.Layers.ILinear)floats[path];
                    target.weight.dtype.Should().Be(w.dtype, path);
                    target.weight.copy_(w);
                    copied++;
                }
        copied.Should().Be(14, "the 7 linears of each of the 2 decoder layers are quantized");
        return (quantized, reference);
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void Dora_over_a_quantized_base_equals_dora_over_its_dequantized_weights(string kind)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture("dora", "llama");
        var (qModel, rModel) = Build(kind);
        var q = PeftModel.GetPeftModel(qModel, Dora);
        var r = PeftModel.GetPeftModel(rModel, Dora);
        q.Layers.Keys.Should().Equal(r.Layers.Keys);
        q.Layers.Values.Should().OnlyContain(l => l.BaseLayer is IQuantizedLinear && !ReferenceEquals(l.Magnitude("default"), null));

        // Init: m = ‖dequantize(W)‖ per row (B is 0), the same A from the same seed, and the base's logits.
        double magnitudeErr = q.Layers.Max(kv => MethodFixture.RelErr(kv.Value.Magnitude("default")!, r.Layers[kv.Key].Magnitude("default")!));
        double aErr = q.Layers.Max(kv => MethodFixture.RelErr(kv.Value.LoraA("default"), r.Layers[kv.Key].LoraA("default")));
        var ids = f.Load("logits_input_ids"); var mask = f.Load("logits_attention_mask");
        var positions = DoraTests.Positions(ids);
        double initErr;
        qModel.eval(); rModel.eval();
        using (no_grad()) initErr = MethodFixture.MaxErr(qModel.Forward(ids, mask, positions), rModel.Forward(ids, mask, positions), mask);

        // 3 AdamW steps with dropout: the DoRA term recomputes W x from the dequantized weight on the dropped-out input.
        using var batch = f.TrainBatch();
        double[] Train(PeftModel lm)
        {
            using var trainer = new Trainer(lm, MethodFixture.Recipe);
            return [.. Enumerable.Range(0, 3).Select(_ => trainer.Step([batch], 1e-3))];
        }
        var qLosses = Train(q);
        var rLosses = Train(r);
        double lossErr = MethodFixture.LossRelErr(qLosses, rLosses);
        double trainedErr = q.Layers.Max(kv => MethodFixture.RelErr(kv.Value.Magnitude("default")!, r.Layers[kv.Key].Magnitude("default")!));

        // Merge: quantize(m / ‖W + ΔW‖ · (W + ΔW)) of the reference's float merge.
        var before = q.Layers.ToDictionary(kv => kv.Key, kv => Dequantized(kv.Value));
        q.MergeAdapter();
        r.MergeAdapter();
        double mergeErr = 0, mergeMoved = 0;
        var merged = q.Layers.ToDictionary(kv => kv.Key, kv => Dequantized(kv.Value));
        foreach (var (path, w) in merged)
        {
            using var expected = Requantized(kind, r.Layers[path].weight);
            mergeErr = Math.Max(mergeErr, MaxAbs(w, expected));
            var layer = q.Layers[path]; // and the formula computed here, not by the library's float merge
            mergeErr = Math.Max(mergeErr, MaxAbs(w, Requantized(kind, Factor(layer, before[path]) * (before[path] + layer.DeltaWeight("default")))));
            mergeMoved = Math.Max(mergeMoved, (w - before[path]).abs().max().item<float>());
        }

        // Unmerge: quantize(W' / (m / n) - ΔW), n the norm of the merge (PEFT's DoraLinearVariant.unmerge into a bnb layer).
        q.UnmergeAdapter();
        double unmergeErr = q.Layers.Max(kv => MaxAbs(Dequantized(kv.Value), Requantized(kind, merged[kv.Key] / Factor(kv.Value, before[kv.Key]) - kv.Value.DeltaWeight("default"))));

        // MergeAndUnload: the quantized layers come back, holding quantize(m / ‖W + ΔW‖ · (W + ΔW)) of the unmerged W.
        var unmerged = q.Layers.ToDictionary(kv => kv.Key, kv => (W: Dequantized(kv.Value), Expected: Requantized(kind, Factor(kv.Value, Dequantized(kv.Value)) * (Dequantized(kv.Value) + kv.Value.DeltaWeight("default")))));
        var plain = Modules(q.MergeAndUnload());
        double unloadErr = unmerged.Max(kv => MaxAbs(plain[kv.Key].Should().BeAssignableTo<IQuantizedLinear>().Subject.DequantizeWeight(), kv.Value.Expected));
        output.WriteLine($"dora over {kind}: init magnitude rel {magnitudeErr:E2}, lora_A rel {aErr:E2}, init logits {initErr:E2}; " +
            $"losses [{string.Join(", ", qLosses.Select(x => x.ToString("R")))}] vs [{string.Join(", ", rLosses.Select(x => x.ToString("R")))}] rel {lossErr:E2}; " +
            $"trained magnitude rel {trainedErr:E2}; merged weight vs quantize(reference merge) max abs {mergeErr:E2} (the merge moved it {mergeMoved:E2}); " +
            $"unmerge {unmergeErr:E2}; merge_and_unload {unloadErr:E2}");
        magnitudeErr.Should().BeLessThanOrEqualTo(1e-6);
        aErr.Should().Be(0, "the adapters are drawn from the same seeded generator");
        initErr.Should().BeLessThanOrEqualTo(1e-5);
        lossErr.Should().BeLessThanOrEqualTo(1e-5);
        qLosses[2].Should().BeLessThan(qLosses[0], "the steps train");
        trainedErr.Should().BeLessThanOrEqualTo(1e-5);
        mergeErr.Should().BeLessThanOrEqualTo(1e-6);
        mergeMoved.Should().BeGreaterThan(1e-3, "the trained adapter changes the quantized weight");
        unmergeErr.Should().BeLessThanOrEqualTo(1e-6);
        unloadErr.Should().BeLessThanOrEqualTo(1e-6);
    }

    /// <summary>The ML.NET route: a DoRA LoraConfig as the method over an LLM.int8 base (formerly refused while injecting).</summary>
    [Fact]
    public void MLNet_fits_dora_over_a_quantized_base_and_saves_a_peft_dora_adapter()
    {
        using var temp = new TempFolder();
        var folder = TinyBaseModel.Create(temp.File("tiny-llama"), "llama", hiddenSize: 64, layers: 2, heads: 4, seed: 4);
        var ml = new MLContext(seed: 1);
        Row[] rows = [new() { Prompt = "sky ->: ", Completion = "blue" }, new() { Prompt = "grass ->: ", Completion = "green" }];
        var data = ml.Data.LoadFromEnumerable(rows);
        var losses = new List<double>();
        var options = new LoraCausalLmOptions
        {
            BaseModelFolder = folder,
            Seed = 5,
            Method = new LoraConfig { R = 4, LoraAlpha = 8, UseDora = true },
            Training = { MaxSteps = 4, BatchSize = 2, LearningRate = 1e-2f, LoggingSteps = 1 },
            Generation = { MaxNewTokens = 3, BatchSize = 2 },
            Quantization = new BitsAndBytesConfig { LoadIn8bit = true },
            Progress = new Sync(p => losses.Add(p.Loss)),
        };
        string zip = temp.File("dora-int8.zip");
        List<string> generated;
        using (var model = ml.Lora().CausalLm(options).Fit(data))
        {
            generated = model.Transform(data).GetColumn<string>("GeneratedText").ToList();
            ml.Model.Save(model, data.Schema, zip);
        }
        output.WriteLine($"ML.NET DoRA over int8: losses {string.Join(", ", losses.Select(l => l.ToString("F4")))}");
        losses.Should().HaveCount(4);
        losses[^1].Should().BeLessThan(losses[0], "the adapter learns");

        using (var archive = ZipFile.OpenRead(zip))
        {
            var adapter = archive.Entries.Where(e => e.FullName.Replace('\\', '/').Contains("Adapter/", StringComparison.Ordinal)).ToList();
            var config = JsonNode.Parse(new StreamReader(adapter.Single(e => e.Name == "adapter_config.json").Open()).ReadToEnd())!;
            config["use_dora"]!.GetValue<bool>().Should().BeTrue();
            adapter.Single(e => e.Name == "adapter_model.safetensors").ExtractToFile(temp.File("adapter_model.safetensors"));
        }
        using (var file = SafeTensorsFile.Open(temp.File("adapter_model.safetensors")))
            file.Tensors.Count(t => t.Name.EndsWith(".lora_magnitude_vector", StringComparison.Ordinal)).Should().Be(4, "q_proj and v_proj of 2 layers: PEFT's DoRA keys");

        // Loading the model quantizes the base again and re-creates DoRA over it: the same generations.
        var ml2 = new MLContext(seed: 2);
        var loaded = ml2.Model.Load(zip, out _);
        try { loaded.Transform(ml2.Data.LoadFromEnumerable(rows)).GetColumn<string>("GeneratedText").Should().Equal(generated); }
        finally { ((IDisposable)loaded).Dispose(); }
    }

    private sealed class Sync(Action<LoraTrainingProgress> a) : IProgress<LoraTrainingProgress> { public void Report(LoraTrainingProgress p) => a(p); }

    private static Tensor Dequantized(LoraLinear layer) => ((IQuantizedLinear)layer.BaseLayer).DequantizeWeight();

    private static double MaxAbs(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    /// <summary>DoRA's m / ‖W + ΔW‖ per output row [out, 1], computed here from <paramref name="w"/> (float32).</summary>
    private static Tensor Factor(LoraLinear layer, Tensor w) =>
        (layer.Magnitude("default")! / linalg.vector_norm(w + layer.DeltaWeight("default"), dims: [1])).unsqueeze(1);
}
