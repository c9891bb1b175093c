using Microsoft.ML.Lora.Quantization;

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

    private string? _promptColumnName;
    private string? _completionColumnName;

    /// <summary>
    /// Text column with the prompt, read when training and when generating. Default "Prompt", or null when
    /// <see cref="PromptTokensColumnName"/> is set. Setting both is an error.
    /// </summary>
    public string? PromptColumnName
    {
        get => _promptColumnName ?? (string.IsNullOrEmpty(PromptTokensColumnName) ? DefaultPromptColumnName : null);
        set => _promptColumnName = value;
    }

    /// <summary>
    /// Text column with the expected completion of the prompt, read only when training. Default "Completion", or null
    /// when <see cref="CompletionTokensColumnName"/> is set. Setting both is an error.
    /// </summary>
    public string? CompletionColumnName
    {
        get => _completionColumnName ?? (string.IsNullOrEmpty(CompletionTokensColumnName) ? DefaultCompletionColumnName : null);
        set => _completionColumnName = value;
    }

    /// <summary>
    /// Instead of <see cref="PromptColumnName"/>: a column of token ids of the prompt (vector of Int32, as made by
    /// <c>mlContext.Lora().Tokenize(BaseModelFolder, ..., addSpecialTokens: true)</c> with the base model's tokenizer),
    /// read when training and when generating. The ids are used as they are: they must include what the tokenizer adds
    /// in front (e.g. Llama's BOS) for the same result as the text column. Default null (the text column is read).
    /// </summary>
    public string? PromptTokensColumnName { get; set; }

    /// <summary>
    /// Instead of <see cref="CompletionColumnName"/>: a column of token ids of the completion (vector of Int32, as made
    /// by <c>mlContext.Lora().Tokenize(BaseModelFolder, ..., addSpecialTokens: false)</c>), read only when training;
    /// EOS is appended as for text. Default null (the text column is read).
    /// </summary>
    public string? CompletionTokensColumnName { get; set; }

    internal bool PromptIsTokens => !string.IsNullOrEmpty(PromptTokensColumnName);

    internal bool CompletionIsTokens => !string.IsNullOrEmpty(CompletionTokensColumnName);

    /// <summary>The prompt column read, text or tokens.</summary>
    internal string PromptColumn => PromptIsTokens ? PromptTokensColumnName! : PromptColumnName!;

    /// <summary>The completion column read, text or tokens.</summary>
    internal string CompletionColumn => CompletionIsTokens ? CompletionTokensColumnName! : CompletionColumnName!;

    /// <summary>Text column that the trained transformer adds with the generated completion. Default "GeneratedText".</summary>
    public string OutputColumnName { get; set; } = DefaultOutputColumnName;

    /// <summary>
    /// Seed of every random choice of training (LoRA initialisation, shuffling, dropout) and of sampling. Default null:
    /// drawn from the MLContext's random source when the trainer is created, so <c>new MLContext(seed: n)</c> makes a
    /// Fit repeatable, as for ML.NET's own trainers; with <see cref="LoraTrainingOptions.ResumeFromCheckpoint"/>, the
    /// checkpoint's seed. The seed used is saved with the model.
    /// </summary>
    public int? Seed { get; set; }

    /// <summary>Device of the model: "cpu", "cuda" or "cuda:N". Default "cpu".</summary>
    public string Device { get; set; } = "cpu";

    /// <summary>Type of the base weights: "float32", "bfloat16" or "float16" (the LoRA weights stay float32 over a half-precision base, as PEFT's autocast_adapter_dtype). Default "float32".</summary>
    public string DType { get; set; } = "float32";

    /// <summary>
    /// CPU threads of libtorch's intra-op parallelism (<c>torch.set_num_threads</c>) for a model on the CPU, as ML.NET
    /// trainers' NumberOfThreads. Null (the default) chooses automatically (<c>CpuThreads</c>, see docs/options.md).
    /// libtorch's setting is process-wide: Fit and Load set it when their model is on the CPU, and it stays for
    /// every later Transform and Predict of the process (the last Fit or Load wins). Not saved with the model (it is a
    /// setting of the machine, not of the model).
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public int? NumberOfThreads { get; set; }

    /// <summary>
    /// Arithmetic of the base model's matrix multiplications (bitsandbytes' compute_dtype): null or "" for the weights'
    /// own type, as transformers computes, or "float32" over "bfloat16" weights: float32 results (generation and
    /// training equal to a float32 model with the same weights) on half the memory, at two to three times the time of
    /// a bfloat16 matmul (about that of float32). Default null.
    /// </summary>
    public string? ComputeDType { get; set; }

    /// <summary>
    /// Quantize the frozen base while it loads, as transformers' quantization_config: LLM.int8
    /// (<c>new BitsAndBytesConfig { LoadIn8bit = true }</c>) or 4-bit QLoRA (<c>LoadIn4bit = true, Bnb4bitQuantType = "nf4"</c>).
    /// The adapter stays float32 and is an ordinary PEFT adapter for the unquantized base. Saved with the model (a
    /// loaded model quantizes its base again). Default null: no quantization. See docs/quantization.md.
    /// </summary>
    public BitsAndBytesConfig? Quantization { get; set; }

    /// <summary>Shape of the LoRA adapter. Default: <see cref="LoraAdapterOptions"/>'s defaults.</summary>
    public LoraAdapterOptions Lora { get; set; } = new();

    /// <summary>
    /// The PEFT method to train instead of the LoRA of <see cref="Lora"/>, with its settings and PEFT's defaults:
    /// <see cref="Peft.IA3Config"/> ((IA)³), <see cref="Peft.PromptTuningConfig"/> (prompt tuning),
    /// <see cref="Peft.PromptEncoderConfig"/> (P-tuning), <see cref="Peft.PrefixTuningConfig"/> (prefix tuning), or a
    /// <see cref="Peft.LoraConfig"/> for LoRA settings <see cref="Lora"/> does not have (DoRA, rsLoRA, bias, ...). When
    /// set, <see cref="Lora"/> must keep its defaults. A prompt-tuning TEXT init without a tokenizer folder uses the base
    /// model's. Default null: LoRA shaped by <see cref="Lora"/>. Not written to the options of a saved model: its
    /// adapter, in PEFT's format, names the method and its settings in adapter_config.json, and a loaded model sets
    /// this property from it (LoRA adapters stay described by <see cref="Lora"/>).
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public Peft.PeftConfig? Method { get; set; }

    /// <summary>Fine-tuning settings. Default: <see cref="LoraTrainingOptions"/>'s defaults.</summary>
    public LoraTrainingOptions Training { get; set; } = new();

    /// <summary>Text generation settings, saved with the model. Default: <see cref="LoraGenerationOptions"/>'s defaults.</summary>
    public LoraGenerationOptions Generation { get; set; } = new();

    /// <summary>
    /// Receives typed progress while Fit trains (step, epoch, loss, learning rate, tokens/s, ETA, validation loss);
    /// called on the training thread. Not saved. Default null.
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public IProgress<LoraTrainingProgress>? Progress { get; set; }

    /// <summary>
    /// Stops Fit before its next optimizer step with an <see cref="OperationCanceledException"/> (as
    /// <c>mlContext.CancelExecution()</c> does). Not saved. Default none.
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public CancellationToken CancellationToken { get; set; }

    /// <summary>
    /// The adapter's config: <see cref="LoraCausalLmOptions.Method"/> when set (recording the base model folder, and
    /// using its tokenizer for a prompt-tuning TEXT init that names none), else LoRA from <see cref="LoraCausalLmOptions.Lora"/>.
    /// </summary>
    internal Peft.PeftConfig ToPeftConfig() => Method switch
    {
        null => ToLoraConfig(),
        Peft.PromptTuningConfig { PromptTuningInit: Peft.PromptTuningInit.Text, TokenizerNameOrPath: null } text =>
            text with { TokenizerNameOrPath = BaseModelFolder, BaseModelNameOrPath = text.BaseModelNameOrPath ?? BaseModelFolder },
        var method => method with { BaseModelNameOrPath = method.BaseModelNameOrPath ?? BaseModelFolder },
    };

    internal Peft.LoraConfig ToLoraConfig() => new()
    {
        R = Lora.Rank,
        LoraAlpha = Lora.Alpha,
        LoraDropout = Lora.Dropout,
        TargetModules = Lora.TargetModules is { Length: > 0 } t ? t : null,
        ExcludeModules = Lora.ExcludeModules is { Length: > 0 } x ? x : null,
        BaseModelNameOrPath = BaseModelFolder,
    };

    internal LoraCausalLmOptions Clone() => new()
    {
        BaseModelFolder = BaseModelFolder,
        _promptColumnName = _promptColumnName,
        _completionColumnName = _completionColumnName,
        PromptTokensColumnName = PromptTokensColumnName,
        CompletionTokensColumnName = CompletionTokensColumnName,
        OutputColumnName = OutputColumnName,
        Seed = Seed,
        Device = Device,
        DType = DType,
        ComputeDType = ComputeDType,
        NumberOfThreads = NumberOfThreads,
        Quantization = Quantization,
        Lora = Lora.Clone(),
        Method = Method,
        Training = Training.Clone(),
        Generation = Generation.Clone(),
        Progress = Progress,
        CancellationToken = CancellationToken,
    };
}
