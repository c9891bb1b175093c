namespace Microsoft.ML.Lora.Training;

/// <summary>Learning-rate schedule after warmup (transformers' SchedulerType).</summary>
public enum LrSchedulerType
{
    /// <summary>Constant after warmup ("constant_with_warmup"; "constant" when there is no warmup).</summary>
    Constant,
    /// <summary>Linear decay to 0 at the last step.</summary>
    Linear,
    /// <summary>Half-cosine decay to 0 at the last step.</summary>
    Cosine,
}

/// <summary>What to do with an example longer than the model's context.</summary>
public enum OverlengthPolicy
{
    /// <summary>Cut the example to the context length and count it in <see cref="TrainingProgress.TruncatedExamples"/>.</summary>
    Truncate,
    /// <summary>Throw an <see cref="ArgumentException"/> naming the example.</summary>
    Error,
}

/// <summary>Options of the LoRA trainer; names and defaults follow transformers' TrainingArguments where they exist.</summary>
public sealed record TrainingOptions
{
    /// <summary>Peak learning rate (default 2e-4).</summary>
    public double LearningRate { get; init; } = 2e-4;
    /// <summary>AdamW weight decay (default 0).</summary>
    public double WeightDecay { get; init; }
    /// <summary>AdamW beta1 (0.9).</summary>
    public double AdamBeta1 { get; init; } = 0.9;
    /// <summary>AdamW beta2 (0.999).</summary>
    public double AdamBeta2 { get; init; } = 0.999;
    /// <summary>AdamW epsilon (1e-8).</summary>
    public double AdamEpsilon { get; init; } = 1e-8;
    /// <summary>Examples per micro-batch (default 4).</summary>
    public int BatchSize { get; init; } = 4;
    /// <summary>Micro-batches per optimizer step (default 1).</summary>
    public int GradientAccumulationSteps { get; init; } = 1;
    /// <summary>Optimizer steps to run; when &gt; 0 it overrides <see cref="NumEpochs"/>.</summary>
    public int MaxSteps { get; init; } = -1;
    /// <summary>Passes over the data when <see cref="MaxSteps"/> is not set (default 1).</summary>
    public double NumEpochs { get; init; } = 1;
    /// <summary>Gradient-norm clipping; 0 or less disables it (default 1.0).</summary>
    public double MaxGradNorm { get; init; } = 1.0;
    /// <summary>Schedule (default linear).</summary>
    public LrSchedulerType LrScheduler { get; init; } = LrSchedulerType.Linear;
    /// <summary>Warmup steps; overrides <see cref="WarmupRatio"/> when &gt; 0.</summary>
    public int WarmupSteps { get; init; }
    /// <summary>Warmup as a fraction of the total steps (ceil(ratio × steps), as transformers).</summary>
    public double WarmupRatio { get; init; }
    /// <summary>Seed of the shuffling (default 42).</summary>
    public int Seed { get; init; } = 42;
    /// <summary>Shuffle the examples every epoch (default true).</summary>
    public bool Shuffle { get; init; } = true;
    /// <summary>Report progress every N optimizer steps (default 10).</summary>
    public int LoggingSteps { get; init; } = 10;
    /// <summary>Evaluate every N steps when an eval set is given; 0 evaluates only at the end.</summary>
    public int EvalSteps { get; init; }
    /// <summary>Write checkpoint-N folders every N steps into <see cref="OutputDir"/>; 0 disables.</summary>
    public int SaveSteps { get; init; }
    /// <summary>Folder of the checkpoints.</summary>
    public string? OutputDir { get; init; }
    /// <summary>
    /// transformers' EarlyStoppingCallback early_stopping_patience: stop after this many evaluations in a row whose eval
    /// loss is not below the best one; 0 (default) never stops early. Needs an eval set.
    /// </summary>
    public int EarlyStoppingPatience { get; init; }
    /// <summary>
    /// transformers' load_best_model_at_end: at the end, put back the adapter weights of the evaluation with the lowest
    /// eval loss (kept in memory; the evaluation at the last step counts too). Default false. Needs an eval set.
    /// </summary>
    public bool LoadBestModelAtEnd { get; init; }
    /// <summary>Longest example in tokens; 0 uses the model's context length.</summary>
    public int MaxSequenceLength { get; init; }
    /// <summary>What to do with longer examples.</summary>
    public OverlengthPolicy Overlength { get; init; } = OverlengthPolicy.Truncate;
    /// <summary>Append EOS to every completion (default true).</summary>
    public bool AppendEos { get; init; } = true;
    /// <summary>Train on prompt tokens too (default false: the prompt is masked with -100).</summary>
    public bool TrainOnPrompt { get; init; }
    /// <summary>
    /// Recompute each decoder layer in backward instead of keeping its activations (transformers'
    /// gradient_checkpointing; <see cref="Models.CausalLm.GradientCheckpointingEnable"/>). Default false.
    /// </summary>
    public bool GradientCheckpointing { get; init; }
    /// <summary>First loss scale of float16 models (dynamic loss scaling as PyTorch's GradScaler; default 65536). Unused otherwise.</summary>
    public double InitialLossScale { get; init; } = 65536;

    internal void Validate()
    {
        // Non-finite values are refused here: +inf passed "> 0" and trained a garbage adapter.
        if (!(LearningRate > 0) || !double.IsFinite(LearningRate)) throw new ArgumentException($"TrainingOptions.LearningRate must be positive and finite, got {LearningRate}.");
        if (!(WeightDecay >= 0) || !double.IsFinite(WeightDecay)) throw new ArgumentException($"TrainingOptions.WeightDecay must be finite and not negative, got {WeightDecay}.");
        if (!(AdamBeta1 is >= 0 and < 1)) throw new ArgumentException($"TrainingOptions.AdamBeta1 must be in [0, 1), got {AdamBeta1}.");
        if (!(AdamBeta2 is >= 0 and < 1)) throw new ArgumentException($"TrainingOptions.AdamBeta2 must be in [0, 1), got {AdamBeta2}.");
        if (!(AdamEpsilon > 0) || !double.IsFinite(AdamEpsilon)) throw new ArgumentException($"TrainingOptions.AdamEpsilon must be positive and finite, got {AdamEpsilon}.");
        if (!(MaxGradNorm >= 0) || !double.IsFinite(MaxGradNorm)) throw new ArgumentException($"TrainingOptions.MaxGradNorm must be finite and not negative (0: no clipping), got {MaxGradNorm}.");
        if (double.IsNaN(NumEpochs) || double.IsInfinity(NumEpochs)) throw new ArgumentException($"TrainingOptions.NumEpochs must be finite, got {NumEpochs}.");
        if (BatchSize <= 0) throw new ArgumentException($"TrainingOptions.BatchSize must be positive, got {BatchSize}.");
        if (GradientAccumulationSteps <= 0) throw new ArgumentException($"TrainingOptions.GradientAccumulationSteps must be positive, got {GradientAccumulationSteps}.");
        if (MaxSteps <= 0 && NumEpochs <= 0) throw new ArgumentException("Set TrainingOptions.MaxSteps or a positive NumEpochs.");
        if (!(WarmupRatio is >= 0 and <= 1)) throw new ArgumentException($"TrainingOptions.WarmupRatio must be in [0, 1], got {WarmupRatio}.");
        if (!(InitialLossScale > 0) || double.IsInfinity(InitialLossScale)) throw new ArgumentException($"TrainingOptions.InitialLossScale must be positive and finite, got {InitialLossScale}.");
        if (SaveSteps > 0 && string.IsNullOrEmpty(OutputDir)) throw new ArgumentException("TrainingOptions.SaveSteps needs an OutputDir.");
        if (EarlyStoppingPatience < 0) throw new ArgumentException($"TrainingOptions.EarlyStoppingPatience must be 0 (off) or positive, got {EarlyStoppingPatience}.");
    }
}

/// <summary>A progress report of the trainer.</summary>
/// <param name="Step">Optimizer steps done.</param>
/// <param name="TotalSteps">Optimizer steps planned.</param>
/// <param name="Loss">Mean training loss since the previous report.</param>
/// <param name="LearningRate">Learning rate of the last step.</param>
/// <param name="TokensPerSecond">Input tokens (non-padding) processed per second since the start of this run.</param>
/// <param name="Elapsed">Time since the start of this run.</param>
/// <param name="Eta">Estimated time to the end.</param>
/// <param name="EvalLoss">Loss on the eval set, when evaluated at this step.</param>
/// <param name="TruncatedExamples">Examples cut to the context length so far.</param>
/// <param name="Epoch">Passes over the training data so far, fractional (micro-batches consumed / micro-batches per epoch).</param>
public sealed record TrainingProgress(int Step, int TotalSteps, double Loss, double LearningRate, double TokensPerSecond,
    TimeSpan Elapsed, TimeSpan Eta, double? EvalLoss = null, int TruncatedExamples = 0, double Epoch = 0);

/// <summary>One training example: prompt tokens (masked from the loss unless TrainOnPrompt) and completion tokens.</summary>
/// <param name="Prompt">Prompt token ids.</param>
/// <param name="Completion">Completion token ids (EOS is appended by the collator).</param>
public sealed record TrainingExample(IReadOnlyList<int> Prompt, IReadOnlyList<int> Completion);
