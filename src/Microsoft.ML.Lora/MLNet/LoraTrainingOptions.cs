namespace Microsoft.ML.Lora;

/// <summary>
/// Fine-tuning settings of <see cref="LoraCausalLmTrainer"/>: the ML.NET face of <see cref="Training.TrainingOptions"/>,
/// whose defaults it takes (one set of defaults); only <see cref="MaxSequenceLength"/> has its own.
/// </summary>
public sealed class LoraTrainingOptions
{
    private static readonly Training.TrainingOptions Defaults = new();

    /// <summary>Passes over the training data. Default 1.</summary>
    public int Epochs { get; set; } = (int)Defaults.NumEpochs;

    /// <summary>Learning rate of the optimizer (AdamW). Default 2e-4.</summary>
    public float LearningRate { get; set; } = (float)Defaults.LearningRate;

    /// <summary>Examples per optimizer step. Default 4.</summary>
    public int BatchSize { get; set; } = Defaults.BatchSize;

    /// <summary>Longest tokenized prompt plus completion; longer examples are cut. Default 512.</summary>
    public int MaxSequenceLength { get; set; } = 512;

    /// <summary>Optimizer steps to run; when above 0 it overrides <see cref="Epochs"/> (transformers' max_steps). Default 0 (off).</summary>
    public int MaxSteps { get; set; }

    /// <summary>Micro-batches of <see cref="BatchSize"/> examples per optimizer step. Default 1.</summary>
    public int GradientAccumulationSteps { get; set; } = Defaults.GradientAccumulationSteps;

    /// <summary>Learning-rate schedule after warmup. Default <see cref="Training.LrSchedulerType.Linear"/>.</summary>
    public Training.LrSchedulerType LrScheduler { get; set; } = Defaults.LrScheduler;

    /// <summary>Warmup as a fraction of the total steps. Default 0.</summary>
    public double WarmupRatio { get; set; } = Defaults.WarmupRatio;

    /// <summary>AdamW weight decay. Default 0.</summary>
    public double WeightDecay { get; set; } = Defaults.WeightDecay;

    /// <summary>Gradient-norm clipping; 0 disables it. Default 1.</summary>
    public double MaxGradNorm { get; set; } = Defaults.MaxGradNorm;

    /// <summary>
    /// Report progress (<see cref="LoraCausalLmOptions.Progress"/> and the MLContext log) every N optimizer steps, and
    /// evaluate the validation data given to <c>Fit(train, validationData)</c> at the same steps. Default 10.
    /// </summary>
    public int LoggingSteps { get; set; } = Defaults.LoggingSteps;

    /// <summary>
    /// Stop after this many validations in a row without a new lowest validation loss (transformers'
    /// early_stopping_patience); needs validation data. Default 0 (off).
    /// </summary>
    public int EarlyStoppingPatience { get; set; }

    /// <summary>
    /// Keep the adapter of the validation with the lowest loss instead of the last one (transformers'
    /// load_best_model_at_end); needs validation data. Default false.
    /// </summary>
    public bool LoadBestModelAtEnd { get; set; }

    /// <summary>Write a checkpoint-N folder (PEFT adapter, optimizer and trainer state) into <see cref="CheckpointFolder"/> every N optimizer steps. Default 0 (off).</summary>
    public int SaveSteps { get; set; }

    /// <summary>Folder of the checkpoint-N folders written every <see cref="SaveSteps"/> steps. Default null.</summary>
    public string? CheckpointFolder { get; set; }

    /// <summary>
    /// A checkpoint-N folder to resume from: Fit continues at step N with that adapter, optimizer state and data
    /// position, and ends with the same adapter as a run that was not interrupted (same options and data). Default null.
    /// </summary>
    public string? ResumeFromCheckpoint { get; set; }

    /// <summary>
    /// Recompute each decoder layer in backward instead of keeping its activations: less memory for about one more
    /// forward pass per step, same results (transformers' gradient_checkpointing; docs/memory.md). Default false.
    /// </summary>
    public bool GradientCheckpointing { get; set; }

    internal LoraTrainingOptions Clone() => (LoraTrainingOptions)MemberwiseClone();
}
