using Microsoft.ML.Lora.MLNet;
using Microsoft.ML.Lora.Training;

namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>Cancellation, typed progress, validation, early stopping and checkpoint/resume of Fit, on a tiny random BLOOM.</summary>
[Collection("TorchGlobalRng")]
public sealed class TrainingControlTests : IDisposable
{
    private readonly TempFolder _root = new();
    private readonly string _base;

    public TrainingControlTests() => _base = TinyBaseModel.Create(_root.File("tiny"), "bloom", hiddenSize: 16, layers: 1, heads: 2, seed: 3);

    public void Dispose() => _root.Dispose();

    private static Row[] Train() =>
    [
        new() { Prompt = "sky ->: ", Completion = "blue" },
        new() { Prompt = "grass ->: ", Completion = "green" },
        new() { Prompt = "snow ->: ", Completion = "white" },
        new() { Prompt = "coal ->: ", Completion = "black" },
    ];

    private LoraCausalLmOptions Options(int maxSteps) => new()
    {
        BaseModelFolder = _base,
        Seed = 5,
        Lora = { Rank = 4, Alpha = 8, Dropout = 0.1f },
        Training = { MaxSteps = maxSteps, BatchSize = 2, LearningRate = 1e-2f, LoggingSteps = 1 },
        Generation = { MaxNewTokens = 4 },
    };

    private sealed class Recorder(Action<LoraTrainingProgress>? then = null) : IProgress<LoraTrainingProgress>
    {
        public List<LoraTrainingProgress> Reports { get; } = [];

        public void Report(LoraTrainingProgress value)
        {
            Reports.Add(value);
            then?.Invoke(value);
        }
    }

    [Fact]
    public void MLContext_CancelExecution_stops_a_long_Fit_within_one_step()
    {
        var ml = new MLContext(seed: 1);
        var options = Options(maxSteps: 1000);
        var progress = new Recorder(p => { if (p.Step == 2) CancelExecution(ml); });
        options.Progress = progress;
        var fit = () => ml.Lora().CausalLm(options).Fit(ml.Data.LoadFromEnumerable(Train()));
        fit.Should().Throw<OperationCanceledException>().WithMessage("Fit was cancelled through MLContext.CancelExecution(). Training stopped after 2 optimizer steps*");
        progress.Reports.Select(r => r.Step).Should().Equal(1, 2);
    }

    [Fact]
    public void A_cancelled_token_stops_Fit_before_the_next_step()
    {
        var ml = new MLContext(seed: 1);
        using var cts = new CancellationTokenSource();
        var options = Options(maxSteps: 1000);
        options.CancellationToken = cts.Token;
        options.Progress = new Recorder(p => { if (p.Step == 3) cts.Cancel(); });
        var fit = () => ml.Lora().CausalLm(options).Fit(ml.Data.LoadFromEnumerable(Train()));
        fit.Should().Throw<OperationCanceledException>().WithMessage("*CancellationToken. Training stopped after 3 optimizer steps*")
            .Which.CancellationToken.Should().Be(cts.Token);
    }

    [Fact]
    public void Progress_is_typed_and_validation_loss_is_reported_at_logging_steps_and_at_the_end()
    {
        var ml = new MLContext(seed: 1);
        var options = Options(maxSteps: 5);
        options.Training.LoggingSteps = 2;
        var progress = new Recorder();
        options.Progress = progress;
        var log = new List<string>();
        ml.Log += (_, e) => { lock (log) log.Add(e.RawMessage); };
        var validation = ml.Data.LoadFromEnumerable(new[] { new Row { Prompt = "sea ->: ", Completion = "blue" } });
        using var model = ml.Lora().CausalLm(options).Fit(ml.Data.LoadFromEnumerable(Train()), validation);

        progress.Reports.Select(r => r.Step).Should().Equal(2, 4, 5);
        progress.Reports.Should().OnlyContain(r => r.TotalSteps == 5 && r.ValidationLoss > 0 && double.IsFinite(r.Loss) && r.LearningRate > 0 && r.TokensPerSecond > 0);
        progress.Reports.Select(r => r.Epoch).Should().Equal(1.0, 2.0, 2.5); // 4 examples, batch 2: 2 micro-batches per epoch
        log.Should().Contain(l => l.StartsWith("step 5/5: ", StringComparison.Ordinal) && l.Contains(", validation loss "));
        log.Should().Contain(l => l.StartsWith("Training done: 5 steps", StringComparison.Ordinal) && l.Contains("best validation loss"));
    }

    [Fact]
    public void Early_stopping_ends_when_the_validation_loss_stops_falling_and_keeps_the_best_adapter()
    {
        var ml = new MLContext(seed: 1);
        var options = Options(maxSteps: 60);
        options.Training.LearningRate = 5e-2f;
        options.Training.EarlyStoppingPatience = 2;
        options.Training.LoadBestModelAtEnd = true;
        var progress = new Recorder();
        options.Progress = progress;
        // The validation rows ask for other completions than the training rows: their loss rises once the adapter memorises.
        var validation = ml.Data.LoadFromEnumerable(new[] { new Row { Prompt = "sky ->: ", Completion = "grey" }, new Row { Prompt = "coal ->: ", Completion = "red" } });
        using var model = ml.Lora().CausalLm(options).Fit(ml.Data.LoadFromEnumerable(Train()), validation);

        var losses = progress.Reports.Select(r => r.ValidationLoss!.Value).ToList();
        int best = losses.IndexOf(losses.Min());
        progress.Reports[^1].Step.Should().BeLessThan(60, "the validation loss stopped falling");
        losses.Count.Should().Be(best + 1 + 2, "it stops after 2 validations without a new minimum");

        var factory = (TorchSharpTextGenerator)GeneratorOf(model);
        var options2 = Options(maxSteps: 1);
        var trainer = new Trainer(factory.Model, TorchSharpTextGeneratorFactory.ToTrainingOptions(options2, appendEos: true));
        using (trainer)
        {
            var tokenizer = BackendTokenizer.Load(_base);
            var collator = new Collator(TinyBaseModel.VocabSize - 1, TinyBaseModel.VocabSize - 1, true, false, 512, OverlengthPolicy.Truncate);
            var encoded = new[] { ("sky ->: ", "grey"), ("coal ->: ", "red") }
                .Select((e, i) => collator.Encode(new TrainingExample(tokenizer.Encode(e.Item1, true), tokenizer.Encode(e.Item2, false)), i)).ToList();
            trainer.Evaluate(encoded, collator).Should().BeApproximately(losses[best], 1e-6, "the adapter of the best validation is kept");
        }
    }

    [Fact]
    public void Resuming_from_a_checkpoint_gives_the_adapter_of_an_uninterrupted_run()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Train());
        var full = Options(maxSteps: 6);
        full.Training.SaveSteps = 3;
        full.Training.CheckpointFolder = _root.File("checkpoints");
        byte[] expected;
        using (var model = ml.Lora().CausalLm(full).Fit(data))
            expected = AdapterBytes(model);
        Directory.Exists(Path.Combine(full.Training.CheckpointFolder, "checkpoint-3")).Should().BeTrue();

        // Interrupted after step 4 (past checkpoint-3), then resumed from checkpoint-3 by a new Fit.
        using var cts = new CancellationTokenSource();
        var interrupted = Options(maxSteps: 6);
        interrupted.CancellationToken = cts.Token;
        interrupted.Progress = new Recorder(p => { if (p.Step == 4) cts.Cancel(); });
        var cancelled = () => ml.Lora().CausalLm(interrupted).Fit(data);
        cancelled.Should().Throw<OperationCanceledException>();

        var resumed = Options(maxSteps: 6);
        resumed.Training.ResumeFromCheckpoint = Path.Combine(full.Training.CheckpointFolder, "checkpoint-3");
        var progress = new Recorder();
        resumed.Progress = progress;
        using (var model = ml.Lora().CausalLm(resumed).Fit(data))
            AdapterBytes(model).Should().Equal(expected);
        progress.Reports.Select(r => r.Step).Should().Equal(4, 5, 6);
    }

    /// <summary>MLContext.CancelExecution(): internal in Microsoft.ML, public as an extension in the Microsoft.ML.Experimental package.</summary>
    private static void CancelExecution(MLContext ml) =>
        typeof(MLContext).GetMethod("CancelExecution", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Public)!
            .Invoke(ml, null);

    private static ITextGenerator GeneratorOf(LoraCausalLmTransformer model) =>
        (ITextGenerator)typeof(SharedTextGenerator).GetField("_generator", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!
            .GetValue(model.Generator)!;

    private byte[] AdapterBytes(LoraCausalLmTransformer model)
    {
        string folder = _root.File("adapter-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        model.Generator.SaveAdapter(folder);
        return File.ReadAllBytes(Path.Combine(folder, "adapter_model.safetensors"));
    }
}
