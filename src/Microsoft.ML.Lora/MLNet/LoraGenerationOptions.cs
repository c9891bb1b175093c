namespace Microsoft.ML.Lora;

/// <summary>Text generation settings of <see cref="LoraCausalLmTransformer"/>; saved with the model.</summary>
public sealed class LoraGenerationOptions
{
    /// <summary>Most tokens generated for one prompt. Default 64.</summary>
    public int MaxNewTokens { get; set; } = 64;

    /// <summary>Sampling temperature; 0 means greedy decoding. Default 0.</summary>
    public float Temperature { get; set; }

    /// <summary>Nucleus sampling threshold, used when <see cref="Temperature"/> is above 0. Default 1 (off).</summary>
    public float TopP { get; set; } = 1f;

    /// <summary>Keep the K most likely tokens when sampling; 0 is off. Default 0.</summary>
    public int TopK { get; set; }

    /// <summary>Hugging Face repetition penalty; 1 is off. Default 1.</summary>
    public float RepetitionPenalty { get; set; } = 1f;

    /// <summary>Prompts generated together when a transformed data view is read. Default 8.</summary>
    public int BatchSize { get; set; } = 8;

    internal LoraGenerationOptions Clone() => (LoraGenerationOptions)MemberwiseClone();
}
