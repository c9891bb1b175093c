using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Tests.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Training;

[Collection("TorchGlobalRng")]
public class TrainerTests
{
    private sealed class SyncProgress(Action<TrainingProgress> a) : IProgress<TrainingProgress> { public void Report(TrainingProgress p) => a(p); }

    private static List<TrainingExample> Data(int n, int seed = 5)
    {
        var rng = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => new TrainingExample(
            Enumerable.Range(0, rng.Next(2, 6)).Select(_ => rng.Next(3, 64)).ToArray(),
            Enumerable.Range(0, rng.Next(3, 10)).Select(_ => rng.Next(3, 64)).ToArray())).ToList();
    }

    private static PeftModel NewModel(double dropout = 0.0) =>
        PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig(), seed: 11), new LoraConfig { R = 4, LoraAlpha = 8, LoraDropout = dropout, TargetModules = [LoraConfig.AllLinear] });

    private static TrainingOptions Options(string dir) => new()
    {
        LearningRate = 5e-3, BatchSize = 3, GradientAccumulationSteps = 2, MaxSteps = 10, WarmupSteps = 2, LrScheduler = LrSchedulerType.Cosine,
        SaveSteps = 5, OutputDir = dir, Seed = 3, LoggingSteps = 1, WeightDecay = 0.01,
    };

    [Fact]
    public void Loss_decreases_and_progress_reports_every_step()
    {
        using var scope = NewDisposeScope();
        var lm = NewModel();
        var reports = new List<TrainingProgress>();
        var trainer = new Trainer(lm, new TrainingOptions { LearningRate = 1e-2, BatchSize = 4, MaxSteps = 30, LoggingSteps = 10, LrScheduler = LrSchedulerType.Constant });
        var data = Data(8);
        trainer.Train(data, eval: data.Take(4).ToList(), progress: new SyncProgress(reports.Add));
        reports.Select(r => r.Step).Should().Equal(10, 20, 30);
        reports[^1].EvalLoss.Should().NotBeNull();
        reports.Should().OnlyContain(r => r.TokensPerSecond > 0 && r.LearningRate == 1e-2 && r.TotalSteps == 30);
        trainer.Losses[^1].Should().BeLessThan(trainer.Losses[0] - 0.5);
    }

    [Fact]
    public void Resume_continues_the_same_loss_trajectory()
    {
        using var scope = NewDisposeScope();
        using var tempA = new TempFolder();
        var dirA = tempA.Path;
        using var tempB = new TempFolder();
        var dirB = tempB.Path;
        var data = Data(10);
        var a = NewModel(dropout: 0.1);
        var ta = new Trainer(a, Options(dirA));
        ta.Train(data);
        Directory.Exists(Path.Combine(dirA, "checkpoint-5")).Should().BeTrue();
        Directory.Exists(Path.Combine(dirA, "checkpoint-10")).Should().BeTrue();

        var b1 = NewModel(dropout: 0.1);
        using var cts = new CancellationTokenSource();
        var tb1 = new Trainer(b1, Options(dirB));
        var act = () => tb1.Train(data, progress: new SyncProgress(p => { if (p.Step == 5) cts.Cancel(); }), cancellation: cts.Token);
        act.Should().Throw<OperationCanceledException>();
        tb1.GlobalStep.Should().Be(5);

        var b2 = NewModel(dropout: 0.1);
        var tb2 = new Trainer(b2, Options(dirB));
        tb2.Train(data, resumeFrom: Path.Combine(dirB, "checkpoint-5"));
        tb2.Losses.Should().HaveCount(10);
        for (int i = 0; i < 10; i++) tb2.Losses[i].Should().BeApproximately(ta.Losses[i], 1e-6);
        foreach (var (path, l) in a.Layers)
        {
            (b2.Layers[path].LoraA("default") - l.LoraA("default")).abs().max().item<float>().Should().Be(0f);
            (b2.Layers[path].LoraB("default") - l.LoraB("default")).abs().max().item<float>().Should().Be(0f);
        }
        File.Exists(Path.Combine(dirB, "checkpoint-10", "adapter_model.safetensors")).Should().BeTrue();
        File.Exists(Path.Combine(dirB, "checkpoint-10", "optimizer.pt")).Should().BeTrue();
        TrainerState.Read(Path.Combine(dirB, "checkpoint-10")).MicroBatches.Should().Be(20);
    }

    [Fact]
    public void Accumulation_of_two_micro_batches_equals_one_double_batch()
    {
        using var scope = NewDisposeScope();
        var data = Enumerable.Range(0, 4).Select(i => new TrainingExample([3 + i, 4 + i], [10 + i, 11 + i, 12 + i])).ToList();
        var o = new TrainingOptions { LearningRate = 1e-2, MaxSteps = 4, Shuffle = false, LrScheduler = LrSchedulerType.Constant };
        var t1 = new Trainer(NewModel(), o with { BatchSize = 4 });
        t1.Train(data);
        var t2 = new Trainer(NewModel(), o with { BatchSize = 2, GradientAccumulationSteps = 2 });
        t2.Train(data);
        for (int i = 0; i < 4; i++) t2.Losses[i].Should().BeApproximately(t1.Losses[i], 1e-5);
    }

    [Fact]
    public void Bad_inputs_fail_with_clear_messages()
    {
        using var scope = NewDisposeScope();
        var lm = NewModel();
        var act = () => new Trainer(lm, new TrainingOptions { MaxSteps = 1 }).Train([]);
        act.Should().Throw<ArgumentException>().WithMessage("The training set is empty.*");
        act = () => new Trainer(lm, new TrainingOptions { MaxSteps = 1, Overlength = OverlengthPolicy.Error }).Train([new TrainingExample(Enumerable.Repeat(5, 60).ToArray(), [6, 7, 8, 9])]);
        act.Should().Throw<ArgumentException>().WithMessage("Training example 0 has 65 tokens; the limit is 64*");
        var trunc = new Trainer(lm, new TrainingOptions { MaxSteps = 1 }).Train([new TrainingExample(Enumerable.Repeat(5, 60).ToArray(), [6, 7, 8, 9])]);
        trunc.Truncated.Should().Be(1);

        using (no_grad()) lm.Layers.Values.First().LoraA("default").fill_(float.NaN);
        var before = lm.Layers.Values.Last().LoraA("default").clone();
        act = () => new Trainer(lm, new TrainingOptions { MaxSteps = 3 }).Train(Data(4));
        // NaN weights before any update: the message must not blame the learning rate.
        act.Should().Throw<TrainingDivergedException>().WithMessage("Training stopped at step 1: the weight 'transformer.h.0.*lora_A.default.weight' before training is not finite. It was not finite before any update, so the learning rate is not the cause*")
            .Which.Message.Should().NotContain("Lower the learning rate");
        lm.Layers.Values.Last().LoraA("default").allclose(before, 0, 0).Should().BeTrue();
    }

    /// <summary>
    /// The short version of the 500-step benchmark: no tensor outlives its step (TorchSharp wrappers left to the
    /// finalizer once kept every old gradient alive), and resident memory over steps 41-60 stays within 5% of steps
    /// 11-30 (windows of whole memory-release cycles of the trainer).
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Memory_stays_flat_over_60_steps(bool bfloat16WithFloat32Arithmetic)
    {
        using var scope = NewDisposeScope();
        // The second case runs the custom autograd function of Precision.Float32Linear in every projection.
        var lm = bfloat16WithFloat32Arithmetic
            ? PeftModel.GetPeftModel(
                Lora.Models.ModelLoader.Load(Fixtures.Model("llama"), new() { DType = ScalarType.BFloat16, ComputeDType = ScalarType.Float32 }),
                new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = [LoraConfig.AllLinear] })
            : NewModel();
        var rss = new Dictionary<int, double>();
        var live = new Dictionary<int, long>();
        var trainer = new Trainer(lm, new TrainingOptions { LearningRate = 1e-3, BatchSize = 4, MaxSteps = 60, LoggingSteps = 1 });
        trainer.Train(Data(32), progress: new SyncProgress(p =>
        {
            rss[p.Step] = RssMiB();
            live[p.Step] = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        }));
        live[60].Should().Be(live[10], "tensors alive after step 10 and after step 60");
        double early = Enumerable.Range(11, 20).Max(s => rss[s]), late = Enumerable.Range(41, 20).Max(s => rss[s]);
        ((late - early) / early).Should().BeLessThan(0.05, $"the highest RSS went from {early:F1} MiB (steps 11-30) to {late:F1} MiB (steps 41-60)");
    }

    [Fact]
    public void Disposing_the_trainer_frees_the_optimizer_state()
    {
        using var scope = NewDisposeScope();
        var lm = NewModel();
        var trainer = new Trainer(lm, new TrainingOptions { LearningRate = 1e-3, BatchSize = 4, MaxSteps = 2 });
        trainer.Train(Data(8));
        long before = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        trainer.Dispose();
        long freed = before - TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        freed.Should().BeGreaterThanOrEqualTo(2L * lm.TrainableParameters().Count, "AdamW keeps two moments per trainable parameter");
    }

    private static double RssMiB() =>
        long.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmRSS:")).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0;

    [Fact]
    public void Weight_decay_skips_biases_and_norms_like_the_hf_trainer()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        var lm = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig(), seed: 11), new LoraConfig { R = 4, LoraAlpha = 8, Bias = "all", InitLoraWeights = LoraInit.Random });
        var decay = Trainer.DecayParameters(lm.Model);
        var names = lm.Model.named_parameters().Where(p => decay.Contains(p.parameter.Handle)).Select(p => p.name).ToList();
        names.Should().Contain("transformer.h.0.attn.c_attn.lora_A.default.weight").And.NotContain(n => n.EndsWith("bias") || n.Contains("ln_f"));
        foreach (var arch in Fixtures.Architectures)
        {
            using var model = Lora.Models.ModelLoader.Load(Fixtures.Model(arch));
            var kept = Trainer.DecayParameters(model);
            var decayed = model.named_parameters().Where(p => kept.Contains(p.parameter.Handle)).Select(p => p.name).ToList();
            decayed.Should().NotBeEmpty().And.OnlyContain(n => n.EndsWith(".weight") && !n.Contains("ln_") && !n.Contains("norm"), arch);
        }

        var options = new TrainingOptions { LearningRate = 0.01, WeightDecay = 0.1, MaxSteps = 1 };
        var trainer = new Trainer(lm, options);
        var optimizer = (TorchSharp.Modules.AdamW)typeof(Trainer).GetField("_optimizer", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!.GetValue(trainer)!;
        optimizer.ParamGroups.Count().Should().Be(2);
        var loraA = lm.Layers["transformer.h.0.attn.c_attn"].LoraA("default");
        var bias = lm.TrainableParameters().Single(p => p.Name == "transformer.h.0.attn.c_attn.base_layer.bias").P;
        using (no_grad()) bias.fill_(0.5f); // nonzero, or decay would leave it unchanged too
        using var a0 = loraA.detach().clone();
        using var b0 = bias.detach().clone();
        // A zero gradient leaves only AdamW's decoupled decay: p -= lr · wd · p (the Adam update is 0 / eps = 0).
        using (var zero = lm.TrainableParameters().Select(p => p.P.sum()).Aggregate((x, y) => x + y).mul(0)) zero.backward();
        optimizer.step();
        loraA.allclose(a0.mul(1 - 0.01 * 0.1), 0, 0).Should().BeTrue();
        loraA.allclose(a0, 0, 0).Should().BeFalse();
        bias.allclose(b0, 0, 0).Should().BeTrue();

        trainer.SaveCheckpoint(temp.Path, totalSteps: 1);
        var fresh = new Trainer(PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig(), seed: 11), new LoraConfig { R = 4, LoraAlpha = 8, Bias = "all", InitLoraWeights = LoraInit.Random }), options);
        fresh.Resume(temp.Path, expectedTotalSteps: 1);
        fresh.GlobalStep.Should().Be(0);
    }
}
