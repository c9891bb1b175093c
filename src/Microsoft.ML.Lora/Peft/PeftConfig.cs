namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// Base of every PEFT method's configuration (PEFT's <c>PeftConfig</c>): the fields every method writes to
/// <c>adapter_config.json</c>. Each method derives its own record (<see cref="LoraConfig"/>, ...) with its
/// <see cref="PeftType"/>; the method registry reads and writes it by that name.
/// </summary>
public abstract record PeftConfig
{
    /// <summary><c>peft_type</c>: the method's name in adapter_config.json ("LORA", ...).</summary>
    public abstract string PeftType { get; }
    /// <summary><c>task_type</c> (default "CAUSAL_LM", the only task this library has).</summary>
    public string? TaskType { get; init; } = "CAUSAL_LM";
    /// <summary><c>base_model_name_or_path</c> written to adapter_config.json.</summary>
    public string? BaseModelNameOrPath { get; init; }
    /// <summary><c>revision</c> of the base model, written as given.</summary>
    public string? Revision { get; init; }
    /// <summary><c>inference_mode</c>: the adapter is not trained (PEFT writes true when saving).</summary>
    public bool InferenceMode { get; init; }
    /// <summary><c>modules_to_save</c>: modules (suffix-matched) trained in full and saved with the adapter.</summary>
    public IReadOnlyList<string>? ModulesToSave { get; init; }

    /// <summary>Throws <see cref="ArgumentException"/> when a field is out of range.</summary>
    public virtual void Validate() { }
}
