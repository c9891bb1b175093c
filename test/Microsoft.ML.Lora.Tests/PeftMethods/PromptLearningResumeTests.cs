using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Tests.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.PeftMethods;

/// <summary>
/// A checkpoint of a prompt encoder with an MLP (P-tuning, projected prefix) resumes exactly: the PEFT adapter file holds
/// only the encoder's output, so the checkpoint also holds the encoder's parameters.
/// </summary>
public class PromptLearningResumeTests
{
    private static List<TrainingExample> Data() =>
    [
        new([3, 4, 5], [10, 11, 12, 13]), new([6, 7], [20, 21, 22]), new([8, 9, 10, 11], [30, 31]), new([12], [40, 41, 42, 43, 44]),
    ];

    private static PeftModel NewModel() => PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig(), seed: 11), new PromptEncoderConfig { NumVirtualTokens = 3 });

    private static TrainingOptions Options(string dir) => new()
    {
        LearningRate = 1e-2, BatchSize = 2, MaxSteps = 6, SaveSteps = 3, OutputDir = dir, Seed = 3, LrScheduler = LrSchedulerType.Constant, LoggingSteps = 1,
    };

    [Fact]
    public void P_tuning_resumes_from_a_checkpoint_on_the_same_trajectory()
    {
        using var scope = NewDisposeScope();
        using var dirA = new TempFolder();
        using var dirB = new TempFolder();
        var a = NewModel();
        var ta = new Trainer(a, Options(dirA.Path));
        ta.Train(Data());

        var b1 = NewModel();
        using var cts = new CancellationTokenSource();
        var tb1 = new Trainer(b1, Options(dirB.Path));
        var act = () => tb1.Train(Data(), progress: new Progress(p => { if (p.Step == 3) cts.Cancel(); }), cancellation: cts.Token);
        act.Should().Throw<OperationCanceledException>();

        var b2 = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig(), seed: 11), new PromptEncoderConfig { NumVirtualTokens = 3 });
        using (no_grad()) foreach (var (_, p) in b2.TrainableParameters()) p.zero_(); // nothing of the fresh encoder may survive the resume
        var tb2 = new Trainer(b2, Options(dirB.Path));
        tb2.Train(Data(), resumeFrom: Path.Combine(dirB.Path, "checkpoint-3"));
        for (int i = 0; i < 6; i++) tb2.Losses[i].Should().BeApproximately(ta.Losses[i], 1e-6, $"step {i + 1}");
        foreach (var ((name, p), (_, q)) in a.TrainableParameters().Zip(b2.TrainableParameters()))
            (p - q).abs().max().item<float>().Should().Be(0f, name);
    }

    private sealed class Progress(Action<TrainingProgress> a) : IProgress<TrainingProgress> { public void Report(TrainingProgress p) => a(p); }
}
