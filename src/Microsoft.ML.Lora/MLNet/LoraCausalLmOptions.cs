namespace Microsoft.ML.Lora;

/// <summary>
/// Options of <see cref="LoraCausalLmTrainer"/>: which base model to adapt, which columns to read and write, and the
/// LoRA, training and generation settings. Every property documents its default.
/// </summary>
public sealed class LoraCausalLmOptions
{
    /// <summary>Default name of the prompt column: "Prompt".</summary>
    public const string DefaultPromptColumnName = "Prompt";

    /// <summary>Default name of the completion column: "Completion".</summary>
    public const string DefaultCompletionColumnName = "Completion";

    /// <summary>Default name of the output column: "GeneratedText".</summary>
    public const string DefaultOutputColumnName = "GeneratedText";

    /// <summary>
    /// Folder of the Hugging Face base model (config.json, tokenizer files, *.safetensors). Required, no default.
    /// Saved models store this path and a fingerprint of its config and weights, never the weights.
    /// </summary>
    public string BaseModelFolder { get; set; } = "";

    /// <summary>Text column with the prompt, read when training and when generating. Default "Prompt".</summary>
    public string PromptColumnName { get; set; } = DefaultPromptColumnName;

    /// <summary>Text column with the expected completion of the prompt, read only when training. Default "Completion".</summary>
    public string CompletionColumnName { get; set; } = DefaultCompletionColumnName;

    /// <summary>Text column that the trained transformer adds with the generated completion. Default "GeneratedText".</summary>
    public string OutputColumnName { get; set; } = DefaultOutputColumnName;

    /// <summary>Seed of every random choice of training and sampling. Default 0.</summary>
    public int Seed { get; set; }

    /// <summary>Device of the model: "cpu", "cuda" or "cuda:N". Default "cpu".</summary>
    public string Device { get; set; } = "cpu";

    /// <summary>Type of the base weights: "float32", "bfloat16" or "float16" (the adapter trains in the same type). Default "float32".</summary>
    public string DType { get; set; } = "float32";

    /// <summary>Shape of the LoRA adapter. Default: <see cref="LoraAdapterOptions"/>'s defaults.</summary>
    public LoraAdapterOptions Lora { get; set; } = new();

    /// <summary>Fine-tuning settings. Default: <see cref="LoraTrainingOptions"/>'s defaults.</summary>
    public LoraTrainingOptions Training { get; set; } = new();

    /// <summary>Text generation settings, saved with the model. Default: <see cref="LoraGenerationOptions"/>'s defaults.</summary>
    public LoraGenerationOptions Generation { get; set; } = new();

    internal LoraCausalLmOptions Clone() => new()
    {
        BaseModelFolder = BaseModelFolder,
        PromptColumnName = PromptColumnName,
        CompletionColumnName = CompletionColumnName,
        OutputColumnName = OutputColumnName,
        Seed = Seed,
        Device = Device,
        DType = DType,
        Lora = Lora.Clone(),
        Training = Training.Clone(),
        Generation = Generation.Clone(),
    };
}
