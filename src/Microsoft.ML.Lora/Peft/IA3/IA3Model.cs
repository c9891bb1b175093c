using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// (IA)³ applied to a <see cref="CausalLm"/> in place (PEFT's IA3Model / get_peft_model): targets are wrapped in
/// <see cref="IA3Linear"/>, every base parameter is frozen, and the vectors of the active adapter are trainable.
/// </summary>
internal sealed class IA3Model
{
    private const string Prefix = "base_model.model.";
    private readonly Dictionary<string, IA3Config> _configs = new();

    public CausalLm Model { get; }
    /// <summary>Wrapped layers by module path (the path of the original linear).</summary>
    public IReadOnlyDictionary<string, IA3Linear> Layers { get; }
    public string ActiveAdapter { get; }
    public IA3Config Config => _configs[ActiveAdapter];

    private IA3Model(CausalLm model, Dictionary<string, IA3Linear> layers, string adapter, IA3Config config)
    {
        Model = model; Layers = layers; ActiveAdapter = adapter; _configs[adapter] = config;
    }

    /// <summary>
    /// Wraps the targets of <paramref name="config"/> (the model type's defaults when null) and freezes the rest. A target
    /// is feed-forward when its path ends with one of <see cref="IA3Config.FeedforwardModules"/> (PEFT's endswith).
    /// </summary>
    public static IA3Model Apply(CausalLm model, IA3Config config, string adapterName = "default", bool autocastAdapterDtype = true)
    {
        string type = model.Config.ModelType;
        config = config with
        {
            TargetModules = config.TargetModules ?? IA3Config.DefaultTargets(type),
            FeedforwardModules = config.FeedforwardModules ?? (config.TargetModules is null ? IA3Config.DefaultFeedforward(type) : []),
        };
        config.Validate();
        var linears = LoraModel.LinearModules(model);
        var targets = linears.Where(l => config.TargetModules!.Any(t => LoraConfig.SuffixMatch(l.Path, t))).ToList();
        if (targets.Count == 0)
            throw new ArgumentException($"IA3 target modules [{string.Join(", ", config.TargetModules!)}] not found in the {type} model. Its linear modules are: " +
                string.Join(", ", linears.Select(l => System.Text.RegularExpressions.Regex.Replace(l.Path, @"\.\d+\.", ".N.")).Distinct()) + ".");
        if (!config.FanInFanOut && targets.Any(t => t.Linear.FanInFanOut))
        {
            Console.Error.WriteLine("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
            config = config with { FanInFanOut = true };
        }
        foreach (var p in model.parameters()) p.requires_grad = false;
        var layers = new Dictionary<string, IA3Linear>();
        foreach (var (path, _) in targets)
        {
            bool feedforward = config.FeedforwardModules!.Any(f => path.EndsWith(f, StringComparison.Ordinal));
            var wrapper = new IA3Linear((nn.Module<Tensor, Tensor>)ModuleSurgery.Get(model, path), feedforward);
            ModuleSurgery.Replace(model, path, wrapper);
            wrapper.AddAdapter(adapterName, config, autocastAdapterDtype);
            layers[path] = wrapper;
        }
        return new IA3Model(model, layers, adapterName, config);
    }

    /// <summary>The adapter's vectors by PEFT's in-memory name (<c>model.layers.0.self_attn.k_proj.ia3_l.default</c>).</summary>
    public List<(string Name, TorchSharp.Modules.Parameter P)> TrainableParameters() =>
        LoraModel.DistinctParameters(Model).Where(p => p.P.requires_grad).ToList();

    /// <summary>PEFT's print_trainable_parameters line.</summary>
    public string TrainableReport()
    {
        var ps = LoraModel.DistinctParameters(Model);
        return LoraModel.FormatReport(ps.Where(p => p.P.requires_grad).Sum(p => p.P.numel()), ps.Sum(p => p.P.numel()));
    }

    /// <summary>The tensors PEFT saves, by saved key (<c>base_model.model.&lt;path&gt;.ia3_l</c>; views of the live parameters).</summary>
    public SortedDictionary<string, Tensor> StateDict()
    {
        var dict = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (path, l) in Layers) dict[$"{Prefix}{path}.ia3_l"] = l.Vector(ActiveAdapter);
        return dict;
    }

    /// <summary>adapter_config.json as PEFT 0.18 writes it for IA3.</summary>
    public JsonObject ConfigJson()
    {
        var c = Config;
        static JsonArray Names(IEnumerable<string> s) => new([.. s.Distinct().Order(StringComparer.Ordinal).Select(x => JsonValue.Create(x))]);
        return new JsonObject
        {
            ["auto_mapping"] = null,
            ["base_model_name_or_path"] = c.BaseModelNameOrPath,
            ["exclude_modules"] = null,
            ["fan_in_fan_out"] = c.FanInFanOut,
            ["feedforward_modules"] = Names(c.FeedforwardModules!),
            ["inference_mode"] = true,
            ["init_ia3_weights"] = c.InitIA3Weights,
            ["modules_to_save"] = null,
            ["peft_type"] = "IA3",
            ["peft_version"] = PeftVersion,
            ["revision"] = null,
            ["target_modules"] = Names(c.TargetModules!),
            ["task_type"] = "CAUSAL_LM",
        };
    }

    /// <summary>The PEFT version whose format this library writes.</summary>
    public const string PeftVersion = "0.18.0";

    /// <summary>Parses an IA3 adapter_config.json object.</summary>
    public static IA3Config ReadConfig(JsonObject j, string path)
    {
        if (j["peft_type"]?.GetValue<string>() is { } pt && pt != "IA3") throw new InvalidDataException($"'{path}' has peft_type '{pt}', not IA3.");
        if (j["modules_to_save"] is JsonArray { Count: > 0 }) throw new NotSupportedException($"'{path}': IA3 with modules_to_save is not supported.");
        return new IA3Config
        {
            TargetModules = Strings(j["target_modules"]),
            FeedforwardModules = Strings(j["feedforward_modules"]),
            FanInFanOut = j["fan_in_fan_out"]?.GetValue<bool>() ?? false,
            InitIA3Weights = j["init_ia3_weights"]?.GetValue<bool>() ?? true,
            BaseModelNameOrPath = j["base_model_name_or_path"]?.GetValue<string>(),
        };
    }

    private static List<string>? Strings(JsonNode? node) => node switch
    {
        JsonArray a => a.Select(x => x!.GetValue<string>()).ToList(),
        JsonValue v when v.TryGetValue(out string? s) => [s],
        _ => null,
    };

    public void Merge() { foreach (var l in Layers.Values) l.Merge(ActiveAdapter); }
    public void Unmerge() { foreach (var l in Layers.Values) l.Unmerge(); }

    /// <summary>Merges the vectors into the base weights and puts the original linears back (PEFT's merge_and_unload).</summary>
    public CausalLm MergeAndUnload()
    {
        foreach (var (path, l) in Layers)
        {
            l.Merge(ActiveAdapter);
            ModuleSurgery.Replace(Model, path, l.BaseLayer);
        }
        return Model;
    }

    /// <summary>Writes the adapter folder in PEFT's format (save_pretrained).</summary>
    public void Save(string folder) => PeftAdapterIO.WriteFolder(folder, StateDict(), ConfigJson());

    /// <summary>Applies the IA3 adapter folder's config to <paramref name="model"/> and loads its vectors (PeftModel.from_pretrained).</summary>
    public static IA3Model Load(CausalLm model, string folder, string adapterName = "default")
    {
        var config = ReadConfig(PeftAdapterIO.ReadConfigJson(folder), Path.Combine(folder, PeftAdapterIO.ConfigFile));
        var ia3 = Apply(model, config, adapterName);
        PeftAdapterIO.LoadInto(ia3.StateDict(), folder);
        return ia3;
    }
}
