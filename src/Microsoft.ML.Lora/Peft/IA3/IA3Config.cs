namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// Configuration of an (IA)³ adapter, with the fields and defaults of PEFT's <c>IA3Config</c>
/// (peft/tuners/ia3/config.py): one learned vector per target scales its output features, or its input features
/// on the feed-forward targets. The JSON names written to <c>adapter_config.json</c> are PEFT's.
/// </summary>
public sealed record IA3Config : PeftConfig
{
    /// <inheritdoc/>
    public override string PeftType => "IA3";

    /// <summary>
    /// <c>target_modules</c>: module names matched as PEFT does (the full path equals the name or ends with "." + name).
    /// Null selects PEFT's default for the model type (<see cref="DefaultTargets"/>).
    /// </summary>
    public IReadOnlyList<string>? TargetModules { get; init; }
    /// <summary>
    /// <c>feedforward_modules</c>: the targets whose input is scaled (y = W (x · l)) instead of their output; a subset of
    /// <see cref="TargetModules"/>, matched by suffix. Null selects PEFT's default for the model type.
    /// </summary>
    public IReadOnlyList<string>? FeedforwardModules { get; init; }
    /// <summary>
    /// <c>exclude_modules</c> as a list: modules never adapted even when <see cref="TargetModules"/> selects them, matched
    /// as target names are (the full path equals the name or ends with "." + name), as PEFT's IA3Config.
    /// </summary>
    public IReadOnlyList<string>? ExcludeModules { get; init; }
    /// <summary><c>exclude_modules</c> given as a string: a regular expression that must match the whole module path (<c>re.fullmatch</c>).</summary>
    public string? ExcludeModulesRegex { get; init; }
    /// <summary><c>fan_in_fan_out</c>: the targets store their weight [in, out] (GPT-2's Conv1D); set automatically, as PEFT does, for Conv1D targets.</summary>
    public bool FanInFanOut { get; init; }
    /// <summary><c>init_ia3_weights</c>: start every vector at 1 (the model equals the base model); false keeps torch.randn values (testing only).</summary>
    public bool InitIA3Weights { get; init; } = true;

    /// <summary>PEFT's TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING for the model types this library loads (from the architecture registry).</summary>
    public static IReadOnlyList<string> DefaultTargets(string modelType) => Defaults(modelType).Ia3Targets!;

    /// <summary>PEFT's TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING for the model types this library loads (from the architecture registry).</summary>
    public static IReadOnlyList<string> DefaultFeedforward(string modelType) => Defaults(modelType).Ia3FeedforwardModules!;

    private static Models.Architecture Defaults(string modelType) =>
        Models.Architectures.Find(modelType) is { Ia3Targets: not null, Ia3FeedforwardModules: not null } architecture ? architecture
        : throw new NotSupportedException($"PEFT has no default IA3 target modules for model type '{modelType}'; set IA3Config.TargetModules and FeedforwardModules.");

    /// <summary>Throws <see cref="ArgumentException"/> when the fields do not fit together (PEFT's __post_init__ checks).</summary>
    public override void Validate()
    {
        ExcludedModules.Validate("IA3Config", ExcludeModules, ExcludeModulesRegex);
        if (TargetModules is { Count: 0 }) throw new ArgumentException("IA3Config.TargetModules is empty; leave it null for the model type's default or name at least one module.");
        if (TargetModules is { } t && FeedforwardModules is { } ff && ff.Except(t).FirstOrDefault() is { } extra)
            throw new ArgumentException($"IA3Config.FeedforwardModules must be a subset of TargetModules; '{extra}' is not a target.");
    }

    /// <summary>Parses IA3's fields of an adapter_config.json object.</summary>
    internal static PeftConfig Read(System.Text.Json.Nodes.JsonObject j, string path)
    {
        if (j["modules_to_save"] is System.Text.Json.Nodes.JsonArray { Count: > 0 }) throw new PeftConfigException($"'{path}': IA3 with modules_to_save is not supported.", path, "modules_to_save");
        var (exclude, excludeRegex) = ExcludedModules.Read(j, path);
        return new IA3Config
        {
            ExcludeModules = exclude,
            ExcludeModulesRegex = excludeRegex,
            TargetModules = PeftJson.Strings(j, "target_modules", path),
            FeedforwardModules = PeftJson.Strings(j, "feedforward_modules", path),
            FanInFanOut = PeftJson.Bool(j, "fan_in_fan_out", path) ?? false,
            InitIA3Weights = PeftJson.Bool(j, "init_ia3_weights", path) ?? true,
        };
    }
}
