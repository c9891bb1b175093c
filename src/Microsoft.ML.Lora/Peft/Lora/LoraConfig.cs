namespace Microsoft.ML.Lora.Peft;

/// <summary>How the LoRA matrices start (PEFT's <c>init_lora_weights</c>).</summary>
public enum LoraInit
{
    /// <summary><c>true</c>: A kaiming-uniform (a = sqrt(5)), B zeros, so the adapter starts as a no-op.</summary>
    Default,
    /// <summary><c>"gaussian"</c>: A normal with std 1/r, B zeros.</summary>
    Gaussian,
    /// <summary><c>false</c>: A and B both random (kaiming-uniform); the adapter changes the output from the start (testing only).</summary>
    Random,
}

/// <summary>
/// Configuration of a LoRA adapter, with the fields and defaults of PEFT's <c>LoraConfig</c>
/// (peft/tuners/lora/config.py). The JSON names written to <c>adapter_config.json</c> are PEFT's.
/// </summary>
public sealed record LoraConfig : PeftConfig
{
    /// <inheritdoc/>
    public override string PeftType => "LORA";

    /// <summary>The value of <see cref="TargetModules"/> that selects every linear layer except the output layer.</summary>
    public const string AllLinear = "all-linear";

    /// <summary><c>r</c>: rank of the update (default 8). Must be positive.</summary>
    public int R { get; init; } = 8;
    /// <summary><c>lora_alpha</c>: scale numerator (default 8); the update is scaled by alpha / r (or alpha / sqrt(r) with <see cref="UseRsLora"/>).</summary>
    public double LoraAlpha { get; init; } = 8;
    /// <summary><c>lora_dropout</c>: dropout probability on the adapter's input (default 0).</summary>
    public double LoraDropout { get; init; }
    /// <summary>
    /// <c>target_modules</c>: module names matched as PEFT does (the full path equals the name or ends with "." + name),
    /// or the single entry <see cref="AllLinear"/>. Null selects PEFT's default of the model type (<see cref="DefaultTargets"/>;
    /// bloom: query_key_value; gpt2: c_attn; llama, mistral, qwen2, qwen3, gemma2: q_proj, v_proj; phi3 has none).
    /// </summary>
    public IReadOnlyList<string>? TargetModules { get; init; }
    /// <summary><c>bias</c>: "none" (default), "all" (train every bias) or "lora_only" (train the biases of adapted layers).</summary>
    public string Bias { get; init; } = "none";
    /// <summary>
    /// <c>fan_in_fan_out</c>: the target stores its weight [in, out] (GPT-2's Conv1D). Set automatically, as PEFT does
    /// with a warning, when the targets are Conv1D layers.
    /// </summary>
    public bool FanInFanOut { get; init; }
    /// <summary><c>use_rslora</c>: scale by alpha / sqrt(r) instead of alpha / r.</summary>
    public bool UseRsLora { get; init; }
    /// <summary><c>layers_to_transform</c>: only adapt these layer indices (the number after "h.", "layers." or "blocks."); null adapts all.</summary>
    public IReadOnlyList<int>? LayersToTransform { get; init; }
    /// <summary><c>init_lora_weights</c>.</summary>
    public LoraInit InitLoraWeights { get; init; } = LoraInit.Default;
    /// <summary>
    /// <c>use_dora</c>: Weight-Decomposed LoRA (DoRA): a trainable magnitude per output row rescales W + s·B·A to
    /// m / ‖W + s·B·A‖ (the norm detached), as PEFT's <c>lora/dora.py</c>. Slower per step than plain LoRA.
    /// </summary>
    public bool UseDora { get; init; }

    /// <summary>The factor applied to B·A.</summary>
    public double Scaling => UseRsLora ? LoraAlpha / Math.Sqrt(R) : LoraAlpha / R;

    /// <summary>
    /// PEFT's default target modules for a model type (its architecture's description). Where PEFT has none (phi3),
    /// throws PEFT's message, suggesting the fused attention projection.
    /// </summary>
    public static IReadOnlyList<string> DefaultTargets(string modelType) =>
        Models.Architectures.For(modelType).LoraTargets
        ?? throw new ArgumentException($"{Models.Architecture.NoDefaultTargetsMessage} (PEFT has no default LoRA target modules for model type '{modelType}'): set TargetModules, for example [\"qkv_proj\"] or [\"{AllLinear}\"].");

    /// <summary>Throws <see cref="ArgumentException"/> when a field is out of range.</summary>
    public override void Validate()
    {
        if (R <= 0) throw new ArgumentException($"LoraConfig.R (r) must be a positive integer, got {R}.");
        if (!double.IsFinite(LoraAlpha)) throw new ArgumentException($"LoraConfig.LoraAlpha (lora_alpha) must be finite, got {LoraAlpha}.");
        if (LoraDropout is < 0 or >= 1 || double.IsNaN(LoraDropout)) throw new ArgumentException($"LoraConfig.LoraDropout must be in [0, 1), got {LoraDropout}.");
        if (Bias is not ("none" or "all" or "lora_only")) throw new ArgumentException($"LoraConfig.Bias must be \"none\", \"all\" or \"lora_only\", got \"{Bias}\".");
        if (TargetModules is { Count: 0 }) throw new ArgumentException("LoraConfig.TargetModules is empty; leave it null for the model type's default or name at least one module.");
    }

    /// <summary>PEFT's match: the path equals the target or ends with "." + target.</summary>
    internal static bool SuffixMatch(string path, string target) => path == target || path.EndsWith("." + target, StringComparison.Ordinal);

    /// <summary>The layer index in a path such as transformer.h.3.attn.c_attn, or null.</summary>
    internal static int? LayerIndex(string path)
    {
        var parts = path.Split('.');
        for (int i = 0; i + 1 < parts.Length; i++)
            if (parts[i] is "h" or "layers" or "blocks" && int.TryParse(parts[i + 1], out int idx)) return idx;
        return null;
    }
}
