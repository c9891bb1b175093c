using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// The (IA)³ tuner (PEFT's tuners/ia3/model.py IA3Model): each adapter wraps its targets in <see cref="IA3Linear"/> in
/// place, or is added to a target an earlier adapter wrapped. <see cref="PeftModel"/> holds it.
/// </summary>
internal sealed class IA3Model(CausalLm model) : LayerTuner<IA3Config>(model)
{
    /// <summary>Wrapped layers by module path (the path of the original linear).</summary>
    public IReadOnlyDictionary<string, IA3Linear> Layers => LayersOf<IA3Linear>();

    /// <summary>
    /// The config with PEFT's defaults of the model type for null targets. A target is feed-forward when its path ends
    /// with one of <see cref="IA3Config.FeedforwardModules"/> (PEFT's endswith).
    /// </summary>
    private IA3Config Complete(IA3Config config)
    {
        string type = Model.Config.ModelType;
        config = config with
        {
            TargetModules = config.TargetModules ?? IA3Config.DefaultTargets(type),
            FeedforwardModules = config.FeedforwardModules ?? (config.TargetModules is null ? IA3Config.DefaultFeedforward(type) : []),
        };
        config.Validate();
        return config;
    }

    /// <inheritdoc/>
    protected override IA3Config Inject(string adapterName, IA3Config config, bool autocastAdapterDtype, Action<string> warning)
    {
        config = Complete(config);
        string type = Model.Config.ModelType;
        var linears = LoraModel.LinearModules(Model);
        // PEFT's inject_adapter over every module: excluded first (exclude_modules), then target_modules (linears adapted).
        var linearPaths = linears.Select(l => l.Path).ToHashSet();
        var c = config;
        var selected = ExcludedModules.Select(LoraModel.CandidateModules(Model).Select(m => m.Path),
            path => ExcludedModules.IsExcluded(c.ExcludeModules, c.ExcludeModulesRegex, path),
            path => linearPaths.Contains(path) && c.TargetModules!.Any(t => LoraConfig.SuffixMatch(path, t)),
            c.ExcludeModules, c.ExcludeModulesRegex,
            () => $"IA3 target modules [{string.Join(", ", c.TargetModules!)}] not found in the {type} model. Its linear modules are: " +
                string.Join(", ", linears.Select(l => System.Text.RegularExpressions.Regex.Replace(l.Path, @"\.\d+\.", ".N.")).Distinct()) + ".",
            warning).ToHashSet();
        var targets = linears.Where(l => selected.Contains(l.Path)).ToList();
        if (!config.FanInFanOut && targets.Any(t => t.Linear.FanInFanOut))
        {
            warning("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
            config = config with { FanInFanOut = true };
        }
        foreach (var (path, _) in targets)
        {
            if (TryGetLayer<IA3Linear>(path, out var wrapped))
            {
                wrapped.AddAdapter(adapterName, config, autocastAdapterDtype); // is_feedforward stays the first wrap's, as in PEFT
                continue;
            }
            bool feedforward = config.FeedforwardModules!.Any(f => path.EndsWith(f, StringComparison.Ordinal));
            var wrapper = new IA3Linear((nn.Module<Tensor, Tensor>)ModuleSurgery.Get(Model, path), feedforward);
            Wrap(path, wrapper);
            wrapper.AddAdapter(adapterName, config, autocastAdapterDtype);
        }
        return config;
    }

    /// <summary>The adapter's vectors (<c>ia3_l.&lt;adapter&gt;</c>).</summary>
    public override IEnumerable<Parameter> TrainableParameters(string adapter) => LayersHolding<IA3Linear>(adapter).Select(l => l.Layer.Vector(adapter));

    /// <summary>The tensors PEFT saves, by saved key (<c>base_model.model.&lt;path&gt;.ia3_l</c>; views of the live parameters).</summary>
    public override SortedDictionary<string, Tensor> StateDict(string adapter)
    {
        var dict = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (path, l) in LayersHolding<IA3Linear>(adapter)) dict[$"{PeftAdapterIO.Prefix}{path}.ia3_l"] = l.Vector(adapter);
        return dict;
    }

    /// <summary>IA3's fields of adapter_config.json as PEFT 0.18 writes them.</summary>
    public override JsonObject ConfigJson(string adapter)
    {
        var c = Configs[adapter];
        static JsonArray Names(IEnumerable<string> s) => new([.. s.Distinct().Order(StringComparer.Ordinal).Select(x => JsonValue.Create(x))]);
        return new JsonObject
        {
            ["exclude_modules"] = ExcludedModules.Json(c.ExcludeModules, c.ExcludeModulesRegex),
            ["fan_in_fan_out"] = c.FanInFanOut,
            ["feedforward_modules"] = Names(c.FeedforwardModules!),
            ["init_ia3_weights"] = c.InitIA3Weights,
            ["peft_version"] = PeftVersion,
            ["target_modules"] = Names(c.TargetModules!),
        };
    }

    /// <summary>The PEFT version whose format this library writes.</summary>
    public const string PeftVersion = "0.18.0";
}
