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
    /// <c>target_modules</c> as a list: module names matched as PEFT does (the full path equals the name or ends with
    /// "." + name), or the single entry <see cref="AllLinear"/> (PEFT's string <c>"all-linear"</c>: every linear layer but
    /// the output layer, written to adapter_config.json as their full paths). Null (with <see cref="TargetModulesRegex"/>
    /// null too) selects PEFT's default of the model type (<see cref="DefaultTargets"/>; bloom: query_key_value;
    /// gpt2: c_attn; llama, mistral, qwen2, qwen3, gemma2: q_proj, v_proj; phi3 has none).
    /// </summary>
    public IReadOnlyList<string>? TargetModules { get; init; }
    /// <summary>
    /// <c>target_modules</c> given as a string: a regular expression that must match the whole module path
    /// (PEFT's <c>re.fullmatch</c>), e.g. <c>@".*\.layers\.[0-3]\.self_attn\.(q|v)_proj"</c>; or <c>"all-linear"</c>.
    /// Set at most one of this and <see cref="TargetModules"/>; cannot be combined with <see cref="LayersToTransform"/>.
    /// </summary>
    public string? TargetModulesRegex { get; init; }
    /// <summary>
    /// <c>exclude_modules</c> as a list: modules never adapted even when <see cref="TargetModules"/> (or
    /// <see cref="AllLinear"/>) selects them, matched as target names are (the full path equals the name or ends with
    /// "." + name). Checked first, as PEFT does; when it excludes nothing PEFT's warning is given.
    /// </summary>
    public IReadOnlyList<string>? ExcludeModules { get; init; }
    /// <summary>
    /// <c>exclude_modules</c> given as a string: a regular expression that must match the whole module path
    /// (<c>re.fullmatch</c>), e.g. <c>@".*\.layers\.0\..*"</c>. Set at most one of this and <see cref="ExcludeModules"/>.
    /// </summary>
    public string? ExcludeModulesRegex { get; init; }
    /// <summary><c>bias</c>: "none" (default), "all" (train every bias) or "lora_only" (train the biases of adapted layers).</summary>
    public string Bias { get; init; } = "none";
    /// <summary>
    /// <c>fan_in_fan_out</c>: the target stores its weight [in, out] (GPT-2's Conv1D). Set automatically, as PEFT does
    /// with a warning, when the targets are Conv1D layers.
    /// </summary>
    public bool FanInFanOut { get; init; }
    /// <summary><c>use_rslora</c>: scale by alpha / sqrt(r) instead of alpha / r.</summary>
    public bool UseRsLora { get; init; }
    /// <summary>
    /// <c>layers_to_transform</c>: only adapt these layer indices; null adapts all. The index is the number after the last
    /// <c>.&lt;name&gt;.</c> of the path (3 in <c>model.layers.3.mlp.up_proj</c>), the name being one of
    /// <see cref="LayersPattern"/> when set. Applies to names matched as suffixes, not to full paths or a regex.
    /// </summary>
    public IReadOnlyList<int>? LayersToTransform { get; init; }
    /// <summary><c>layers_pattern</c>: the name(s) of the module list holding the layers ("layers", "h"); needs <see cref="LayersToTransform"/>.</summary>
    public IReadOnlyList<string>? LayersPattern { get; init; }
    /// <summary>
    /// <c>rank_pattern</c>: r per module, overriding <see cref="R"/>. A key is a regular expression matched against the end
    /// of the module path at a dot boundary (PEFT's get_pattern_key), e.g. <c>"layers.0.self_attn.q_proj"</c> or
    /// <c>"v_proj"</c>; the first matching key, in order, wins.
    /// </summary>
    public IReadOnlyDictionary<string, int>? RankPattern { get; init; }
    /// <summary><c>alpha_pattern</c>: lora_alpha per module, overriding <see cref="LoraAlpha"/>, matched as <see cref="RankPattern"/>.</summary>
    public IReadOnlyDictionary<string, double>? AlphaPattern { get; init; }
    /// <summary><c>init_lora_weights</c>.</summary>
    public LoraInit InitLoraWeights { get; init; } = LoraInit.Default;
    /// <summary>
    /// <c>use_dora</c>: Weight-Decomposed LoRA (DoRA): a trainable magnitude per output row rescales W + s·B·A to
    /// m / ‖W + s·B·A‖ (the norm detached), as PEFT's <c>lora/dora.py</c>. Slower per step than plain LoRA.
    /// </summary>
    public bool UseDora { get; init; }

    /// <summary>The factor applied to B·A.</summary>
    public double Scaling => UseRsLora ? LoraAlpha / Math.Sqrt(R) : LoraAlpha / R;

    /// <summary>Whether the targets are PEFT's <c>"all-linear"</c> shorthand (either form, any case).</summary>
    public bool IsAllLinear =>
        string.Equals(TargetModulesRegex, AllLinear, StringComparison.OrdinalIgnoreCase)
        || TargetModules is [var only] && string.Equals(only, AllLinear, StringComparison.OrdinalIgnoreCase);

    /// <summary>This config with the r and lora_alpha that <see cref="RankPattern"/> and <see cref="AlphaPattern"/> give the module at <paramref name="path"/>.</summary>
    public LoraConfig ForModule(string path)
    {
        int r = RankPattern is { Count: > 0 } rp && LoraTargets.PatternKey(rp.Keys, path) is { } rk ? rp[rk] : R;
        double alpha = AlphaPattern is { Count: > 0 } ap && LoraTargets.PatternKey(ap.Keys, path) is { } ak ? ap[ak] : LoraAlpha;
        return r == R && alpha == LoraAlpha ? this : this with { R = r, LoraAlpha = alpha };
    }

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
        if (TargetModules is not null && TargetModulesRegex is not null)
            throw new ArgumentException("LoraConfig: set TargetModules (a list) or TargetModulesRegex (PEFT's string form of target_modules), not both.");
        ExcludedModules.Validate("LoraConfig", ExcludeModules, ExcludeModulesRegex);
        if (TargetModulesRegex is not null && (LayersToTransform is not null || LayersPattern is not null))
            throw new ArgumentException($"LoraConfig: layers_to_transform and layers_pattern cannot be used when target_modules is a string ('{TargetModulesRegex}'), as in PEFT.");
        if (LayersPattern is { Count: > 0 } && LayersToTransform is not { Count: > 0 })
            throw new ArgumentException("LoraConfig: layers_pattern needs layers_to_transform, as in PEFT.");
        foreach (var (k, r) in RankPattern ?? new Dictionary<string, int>())
            if (r <= 0) throw new ArgumentException($"LoraConfig.RankPattern (rank_pattern): '{k}' has r {r}; it must be a positive integer.");
    }

    /// <summary>PEFT's match: the path equals the target or ends with "." + target.</summary>
    internal static bool SuffixMatch(string path, string target) => path == target || path.EndsWith("." + target, StringComparison.Ordinal);
}
