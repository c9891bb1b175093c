using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// The TorchSharp backend: loads the base model (<see cref="ModelLoader"/>) and its tokenizer from
/// <see cref="LoraCausalLmOptions.BaseModelFolder"/>, injects LoRA (<see cref="PeftModel"/>), trains it with
/// <see cref="Trainer"/> and generates with <see cref="Generation.Generator"/>; adapters are saved and loaded in the PEFT format.
/// </summary>
internal sealed class TorchSharpTextGeneratorFactory : ITextGeneratorFactory
{
    public ITextGenerator Train(LoraCausalLmOptions options, IReadOnlyList<PromptCompletion> examples, IReadOnlyList<PromptCompletion>? validation, TrainingControl control)
    {
        var log = control.Log;
        var tokenizer = BackendTokenizer.Load(options.BaseModelFolder);
        var model = ModelLoader.Load(options.BaseModelFolder, LoadOptions(options));
        CpuThreads.Apply(options.NumberOfThreads, options.Device); // after the load, whose native-runtime check explains a missing libtorch
        try
        {
            PeftModel lora;
            using (var rng = new Generator((ulong)options.Seed.GetValueOrDefault())) // LoRA A initialisation, this Fit's own generator
            using (Rng.Use(rng))
                lora = PeftModel.GetPeftModel(model, options.ToPeftConfig(), warning: control.Warning);
            log(lora.TrainableReport());

            var eos = model.Config.EosTokenId ?? tokenizer.EosId;
            if (eos is null) log("The base model names no EOS token: completions are trained without one, generation stops at MaxNewTokens.");
            var train = Encode(tokenizer, model.Config, examples, eos);
            var eval = validation is null ? null : Encode(tokenizer, model.Config, validation, eos, validation: true);
            var trainingOptions = ToTrainingOptions(options, eos is not null, validation is not null);

            var state = Run(lora, trainingOptions, train, eval, control, options.Training.ResumeFromCheckpoint);
            lora.GetBaseModel().eval();
            log(FormattableString.Invariant(
                $"Training done: {state.GlobalStep} steps{(state.StoppedEarly ? " (stopped early)" : "")}, first loss {state.LossHistory.FirstOrDefault():F4}, last loss {state.LossHistory.LastOrDefault():F4}") +
                (state.BestEvalLoss is double best ? FormattableString.Invariant($", best validation loss {best:F4} at step {state.BestStep}") +
                    (options.Training.LoadBestModelAtEnd ? " (its adapter is kept)" : "") : "") +
                (state.Truncated > 0 ? $", {state.Truncated} examples cut to the context length." : "."));
            return new TorchSharpTextGenerator(lora, tokenizer, options);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    public ITextGenerator Load(LoraCausalLmOptions options, string adapterFolder)
    {
        var tokenizer = BackendTokenizer.Load(options.BaseModelFolder);
        var model = ModelLoader.Load(options.BaseModelFolder, LoadOptions(options));
        CpuThreads.Apply(options.NumberOfThreads, options.Device); // after the load, whose native-runtime check explains a missing libtorch
        try
        {
            var lora = PeftModel.FromPretrained(model, adapterFolder); // for generation: loaded in inference mode, as any method allows
            if (lora.PeftConfig is not LoraConfig) options.Method = lora.PeftConfig with { InferenceMode = false };
            lora.GetBaseModel().eval();
            return new TorchSharpTextGenerator(lora, tokenizer, options);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Prompt ids (special prefix, BOS/EOS for an empty prompt) and completion ids; EOS appended here when only the
    /// tokenizer names it. A row that cannot be used (an id outside the vocabulary, text the tokenizer refuses) throws
    /// <see cref="PromptException"/> with its index, for the estimator to name the row and column.
    /// </summary>
    internal static List<TrainingExample> Encode(IBackendTokenizer tokenizer, ModelConfig config, IReadOnlyList<PromptCompletion> examples, int? eos, bool validation = false)
    {
        var list = new List<TrainingExample>(examples.Count);
        for (int i = 0; i < examples.Count; i++)
        {
            var e = examples[i];
            var prompt = Row(i, false, validation, () => e.PromptIds is { } p ? PromptIds(tokenizer, p, config) : PromptIds(tokenizer, e.Prompt, config));
            var completion = Row(i, true, validation, () => CheckIds(e.CompletionIds ?? tokenizer.Encode(e.Completion, addSpecialTokens: false), config));
            list.Add(new TrainingExample(prompt, config.EosTokenId is null && eos is not null ? [.. completion, eos.Value] : completion));
        }
        return list;
    }

    private static int[] Row(int index, bool completion, bool validation, Func<int[]> encode)
    {
        try { return encode(); }
        catch (ArgumentException e) { throw new PromptException(index, e.Message, e, completion, validation); }
    }

    /// <summary>Trains, then frees the optimizer state before generation needs the memory (device memory on CUDA).</summary>
    private static TrainerState Run(PeftModel lora, TrainingOptions options, List<TrainingExample> train, List<TrainingExample>? eval,
        TrainingControl control, string? resumeFrom)
    {
        using var trainer = new Trainer(lora, options) { Warning = control.Warning }; // a loss rising far above its start goes to the log
        try
        {
            return trainer.Train(train, eval, new ControlProgress(control), resumeFrom: resumeFrom, checkAlive: control.CheckAlive);
        }
        catch (OperationCanceledException e)
        {
            throw new OperationCanceledException($"{e.Message} Training stopped after {trainer.GlobalStep} optimizer steps; no model was returned.", e, e.CancellationToken);
        }
    }

    internal static int[] PromptIds(IBackendTokenizer tokenizer, string prompt, ModelConfig config) =>
        PromptIds(tokenizer, tokenizer.Encode(prompt, addSpecialTokens: true), config);

    /// <summary><paramref name="ids"/>, or the start token when there are none.</summary>
    internal static int[] PromptIds(IBackendTokenizer tokenizer, int[] ids, ModelConfig config)
    {
        CheckIds(ids, config);
        if (ids.Length > 0) return ids;
        // An empty prompt still needs one token to condition on: BOS, else EOS (as GPT-2 starts documents).
        var start = config.BosTokenId ?? config.EosTokenId ?? tokenizer.EosId ?? 0;
        return [start];
    }

    /// <summary>Throws when a token id (from a token column, or a tokenizer larger than the model) is outside the model's vocabulary.</summary>
    internal static int[] CheckIds(int[] ids, ModelConfig config)
    {
        foreach (int id in ids)
            if (id < 0 || id >= config.VocabSize)
                throw new ArgumentOutOfRangeException(null, $"Token id {id} is outside the vocabulary of the base model (0 to {config.VocabSize - 1}, vocab_size in its config.json): ids must come from the base model's tokenizer, and that tokenizer must not be larger than the model.");
        return ids;
    }

    internal static ModelLoadOptions LoadOptions(LoraCausalLmOptions o) => new()
    {
        Device = string.IsNullOrWhiteSpace(o.Device) ? "cpu" : o.Device,
        DType = ParseDType(o.DType, nameof(o.DType)) ?? ScalarType.Float32,
        ComputeDType = ParseDType(o.ComputeDType, nameof(o.ComputeDType)),
        QuantizationConfig = o.Quantization,
    };

    private static ScalarType? ParseDType(string? name, string option) => (name ?? "").Trim().ToLowerInvariant() switch
    {
        "" => null,
        "float32" or "fp32" or "float" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        "float16" or "fp16" or "half" => ScalarType.Float16,
        var d => throw new ArgumentException($"LoraCausalLmOptions.{option} '{d}' is not supported; use float32, bfloat16 or float16."),
    };

    internal static TrainingOptions ToTrainingOptions(LoraCausalLmOptions o, bool appendEos, bool validate = false) => new()
    {
        LearningRate = o.Training.LearningRate,
        BatchSize = o.Training.BatchSize,
        GradientAccumulationSteps = o.Training.GradientAccumulationSteps,
        NumEpochs = o.Training.Epochs,
        MaxSteps = o.Training.MaxSteps > 0 ? o.Training.MaxSteps : -1,
        LrScheduler = o.Training.LrScheduler,
        WarmupRatio = o.Training.WarmupRatio,
        WeightDecay = o.Training.WeightDecay,
        MaxGradNorm = o.Training.MaxGradNorm,
        GradientCheckpointing = o.Training.GradientCheckpointing,
        MaxSequenceLength = o.Training.MaxSequenceLength,
        LoggingSteps = Math.Max(1, o.Training.LoggingSteps),
        Seed = o.Seed.GetValueOrDefault(),
        AppendEos = appendEos,
        EvalSteps = validate ? Math.Max(1, o.Training.LoggingSteps) : 0,
        EarlyStoppingPatience = o.Training.EarlyStoppingPatience,
        LoadBestModelAtEnd = o.Training.LoadBestModelAtEnd,
        SaveSteps = o.Training.SaveSteps,
        OutputDir = o.Training.SaveSteps > 0 ? o.Training.CheckpointFolder : null,
    };

    /// <summary>Reports to the log and the typed progress, on the training thread (System.Progress would post to the thread pool).</summary>
    private sealed class ControlProgress(TrainingControl control) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress p)
        {
            control.Log(Format(p));
            control.Progress?.Report(new LoraTrainingProgress(p.Step, p.TotalSteps, p.Epoch, p.Loss, p.LearningRate, p.TokensPerSecond,
                p.Elapsed, p.Eta, p.EvalLoss));
        }
    }

    /// <summary>"step 10/120: loss 2.3456, learning rate 0.003, 1234 tokens/s, elapsed 12.3 s, eta 20.1 s" (invariant culture).</summary>
    internal static string Format(TrainingProgress p) => FormattableString.Invariant(
        $"step {p.Step}/{p.TotalSteps}: loss {p.Loss:F4}, learning rate {p.LearningRate:G4}, {p.TokensPerSecond:F0} tokens/s, elapsed {p.Elapsed.TotalSeconds:F1} s, eta {p.Eta.TotalSeconds:F1} s") +
        (p.EvalLoss is double e ? FormattableString.Invariant($", validation loss {e:F4}") : "");
}
