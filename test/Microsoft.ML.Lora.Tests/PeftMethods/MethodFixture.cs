using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.PeftMethods;

/// <summary>One folder of shared/fixtures/peft/&lt;method&gt;/&lt;arch&gt; (see its README): inputs, references, losses, generation.</summary>
internal sealed class MethodFixture(string method, string arch) : IDisposable
{
    public string Folder { get; } = Path.Combine(Fixtures.Root, "peft", method, arch);
    public string Arch => arch;
    public string AdapterInit => Path.Combine(Folder, "adapter_init");
    public string Adapter => Path.Combine(Folder, "adapter");
    public SafeTensorsFile Reference { get; } = SafeTensorsFile.Open(Path.Combine(Fixtures.Root, "peft", method, arch, "reference.safetensors"));
    public JsonNode Meta { get; } = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Root, "peft", method, arch, "meta.json")))!;

    public Tensor Load(string name) => Reference.Load(name);

    /// <summary>losses[i] before update i, as PEFT recorded them.</summary>
    public double[] Losses => [.. JsonNode.Parse(File.ReadAllText(Path.Combine(Folder, "losses.json")))!["losses"]!.AsArray().Select(x => x!.GetValue<double>())];

    public long[] Greedy(string key = "greedy_with_cache") =>
        [.. JsonNode.Parse(File.ReadAllText(Path.Combine(Folder, "generation.json")))![key]!.AsArray().Select(x => x!.GetValue<long>())];

    /// <summary>The training batch of the recipe: train_input_ids (no padding), labels = the ids.</summary>
    public Batch TrainBatch() => new(Load("train_input_ids"), Load("train_attention_mask"), Load("train_labels_full"), 0);

    /// <summary>Max |a - b| over the positions whose mask is 1 (<paramref name="virtualTokens"/> leading positions always count).</summary>
    public static double MaxErr(Tensor logits, Tensor reference, Tensor mask, int virtualTokens = 0)
    {
        using var scope = NewDisposeScope();
        var full = virtualTokens == 0 ? mask : cat([ones(mask.shape[0], virtualTokens, dtype: mask.dtype), mask], 1);
        var valid = full.unsqueeze(-1).to(ScalarType.Bool);
        return (logits - reference).abs().masked_fill(valid.logical_not(), 0).max().item<float>();
    }

    /// <summary>Max |a - b| / max |b| over a trained tensor.</summary>
    public static double RelErr(Tensor actual, Tensor reference)
    {
        using var scope = NewDisposeScope();
        return (actual - reference).abs().max().item<float>() / Math.Max(1e-12, reference.abs().max().item<float>());
    }

    /// <summary>Max |p - reference(name)| over named parameters.</summary>
    public static double MaxAbsErr(IEnumerable<(string Name, TorchSharp.Modules.Parameter P)> parameters, Func<string, Tensor> reference)
    {
        using var scope = NewDisposeScope();
        return parameters.Max(p => (p.P - reference(p.Name)).abs().max().item<float>());
    }

    /// <summary>Max relative difference of two loss sequences.</summary>
    public static double LossRelErr(IReadOnlyList<double> actual, IReadOnlyList<double> expected) =>
        actual.Zip(expected, (a, b) => Math.Abs(a - b) / Math.Abs(b)).Max();

    /// <summary>The recipe's optimizer as TrainingOptions: AdamW lr 1e-3, weight decay 0, no clipping, constant schedule, 3 steps.</summary>
    public static TrainingOptions Recipe => new() { LearningRate = 1e-3, WeightDecay = 0, MaxGradNorm = 0, LrScheduler = LrSchedulerType.Constant, MaxSteps = 3 };

    /// <summary>
    /// The recipe through the library's <see cref="Trainer"/> on the training batch: one backward for the step-0
    /// gradients (compared with grad_step0.*), then 3 AdamW steps (losses before each update, compared with
    /// losses.json), then the trained values (compared with trained.*). <paramref name="peftPrefix"/> turns a parameter
    /// name of ours into PEFT's in-memory name ("base_model.model." for the layer methods, "" for prompt learning);
    /// <paramref name="afterBackward"/> sees the step-0 gradients.
    /// </summary>
    public TrainResult Train(PeftModel peft, string peftPrefix = "base_model.model.", Action? afterBackward = null)
    {
        using var batch = TrainBatch();
        using var trainer = new Trainer(peft, Recipe);
        trainer.Backward([batch]);
        double gradErr = peft.TrainableParameters().Max(p => RelErr(p.P.grad!, Load($"grad_step0.{peftPrefix}{p.Name}")));
        afterBackward?.Invoke();
        trainer.ZeroGrad();
        var losses = Enumerable.Range(0, 3).Select(_ => trainer.Step([batch], 1e-3)).ToArray();
        // Absolute: Adam moves every entry by about lr per step whatever its gradient, so entries whose gradient is near 0
        // (LoRA's B starts at 0) differ relatively more while every value agrees far below the acceptance bound.
        double paramErr = MaxAbsErr(peft.TrainableParameters(), n => Load($"trained.{peftPrefix}{n}"));
        return new TrainResult($"{method} {arch}", losses, LossRelErr(losses, Losses), gradErr, paramErr);
    }

    /// <summary>What <see cref="Train"/> measured.</summary>
    public sealed record TrainResult(string Name, double[] Losses, double LossErr, double GradErr, double ParamErr)
    {
        public override string ToString() =>
            $"{Name}: losses [{string.Join(", ", Losses.Select(x => x.ToString("F6")))}] max rel {LossErr:E2}; step-0 grad rel {GradErr:E2}; trained params max abs {ParamErr:E2}";
    }

    /// <summary>The adapter file of <paramref name="ours"/> holds the keys of <paramref name="peft"/>'s, with byte-identical tensors.</summary>
    public static void ShouldHoldTheSameTensors(string ours, string peft)
    {
        using var a = SafeTensorsFile.Open(Path.Combine(ours, PeftAdapterIO.WeightsFile));
        using var b = SafeTensorsFile.Open(Path.Combine(peft, PeftAdapterIO.WeightsFile));
        a.Tensors.Select(t => t.Name).Should().BeEquivalentTo(b.Tensors.Select(t => t.Name));
        foreach (var t in b.Tensors) a.ReadBytes(t.Name).Should().Equal(b.ReadBytes(t.Name), t.Name);
    }

    public void Dispose() => Reference.Dispose();
}
