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

    internal LoraTrainingOptions Clone() => (LoraTrainingOptions)MemberwiseClone();
}
