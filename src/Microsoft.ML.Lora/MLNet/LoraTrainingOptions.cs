namespace Microsoft.ML.Lora;

/// <summary>Fine-tuning settings of <see cref="LoraCausalLmTrainer"/>.</summary>
public sealed class LoraTrainingOptions
{
    /// <summary>Passes over the training data. Default 1.</summary>
    public int Epochs { get; set; } = 1;

    /// <summary>Learning rate of the optimizer (AdamW). Default 2e-4.</summary>
    public float LearningRate { get; set; } = 2e-4f;

    /// <summary>Examples per optimizer step. Default 4.</summary>
    public int BatchSize { get; set; } = 4;

    /// <summary>Longest tokenized prompt plus completion; longer examples are cut. Default 512.</summary>
    public int MaxSequenceLength { get; set; } = 512;

    /// <summary>Optimizer steps to run; when above 0 it overrides <see cref="Epochs"/> (transformers' max_steps). Default 0 (off).</summary>
    public int MaxSteps { get; set; }

    /// <summary>Micro-batches of <see cref="BatchSize"/> examples per optimizer step. Default 1.</summary>
    public int GradientAccumulationSteps { get; set; } = 1;

    /// <summary>Learning-rate schedule after warmup. Default <see cref="Training.LrSchedulerType.Linear"/>.</summary>
    public Training.LrSchedulerType LrScheduler { get; set; } = Training.LrSchedulerType.Linear;

    /// <summary>Warmup as a fraction of the total steps. Default 0.</summary>
    public double WarmupRatio { get; set; }

    /// <summary>AdamW weight decay. Default 0.</summary>
    public double WeightDecay { get; set; }

    /// <summary>Gradient-norm clipping; 0 disables it. Default 1.</summary>
    public double MaxGradNorm { get; set; } = 1.0;

    /// <summary>Report the loss to the MLContext log every N optimizer steps. Default 10.</summary>
    public int LoggingSteps { get; set; } = 10;

    internal LoraTrainingOptions Clone() => (LoraTrainingOptions)MemberwiseClone();
}
