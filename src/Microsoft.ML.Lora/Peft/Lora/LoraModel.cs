using System.Globalization;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// The LoRA tuner (PEFT's tuners/lora/model.py LoraModel): the first adapter wraps its targets in
/// <see cref="LoraLinear"/> in place; later adapters are added to the same layers. <see cref="PeftModel"/> holds it.
/// </summary>
internal sealed class LoraModel(CausalLm model) : IPeftTuner
{
    private readonly Dictionary<string, LoraConfig> _configs = new();
    private readonly Dictionary<string, LoraLinear> _layers = new();

    /// <inheritdoc/>
    public CausalLm Model { get; } = model;
    /// <summary>Wrapped layers by module path (the path of the original linear).</summary>
    public IReadOnlyDictionary<string, LoraLinear> Layers => _layers;
    /// <summary>The configs of the adapters, as kept (fan_in_fan_out completed).</summary>
    public IReadOnlyDictionary<string, LoraConfig> Configs => _configs;

    /// <summary>Names of the linear layers of <paramref name="model"/> (what target_modules can match).</summary>
    public static List<(string Path, ILinear Linear)> LinearModules(nn.Module model) =>
        model.named_modules().Where(m => m.module is ILinear && m.module is not LoraLinear && !m.name.Contains(".base_layer", StringComparison.Ordinal) && !m.name.StartsWith("base_layer", StringComparison.Ordinal))
            .Select(m => (m.name, (ILinear)m.module)).ToList();

    /// <summary>The paths <paramref name="config"/> selects on a model with these linear paths.</summary>
    public static List<string> SelectTargets(IEnumerable<string> linearPaths, LoraConfig config, string modelType)
    {
        config.Validate();
        var paths = linearPaths.ToList();
        var targets = config.TargetModules ?? LoraConfig.DefaultTargets(modelType);
        List<string> selected;
        if (targets.Count == 1 && targets[0] == LoraConfig.AllLinear)
            selected = paths.Where(p => p.Split('.')[^1] != "lm_head").ToList();
        else
            selected = paths.Where(p => targets.Any(t => LoraConfig.SuffixMatch(p, t))).ToList();
        if (config.LayersToTransform is { } layers)
            selected = selected.Where(p => LoraConfig.LayerIndex(p) is int i && layers.Contains(i)).ToList();
        if (selected.Count == 0)
        {
            var names = paths.Select(p => System.Text.RegularExpressions.Regex.Replace(p, @"\.\d+\.", ".N.")).Distinct();
            throw new ArgumentException(
                $"Target modules [{string.Join(", ", targets)}] not found in the {modelType} model" +
                (config.LayersToTransform is null ? "" : $" (layers_to_transform [{string.Join(", ", config.LayersToTransform)}])") +
                $". Its linear modules are: {string.Join(", ", names)}.");
        }
        return selected;
    }

    /// <summary>
    /// Adds adapter <paramref name="name"/>. The first wraps the targets of its config (get_peft_model); later ones are
    /// added to the same layers. With <paramref name="autocastAdapterDtype"/> (PEFT's default) the adapter weights of a
    /// bfloat16 or float16 model are float32, so the optimizer updates full-precision weights while the base stays in
    /// half precision.
    /// </summary>
    public PeftConfig AddAdapter(string name, PeftConfig peftConfig, bool autocastAdapterDtype, Action<string> warning)
    {
        using var rng = Training.Rng.UseDefaultUnlessInstalled(); // the init depends on a seed, never on torch's global generator
        if (peftConfig is not LoraConfig config) throw new ArgumentException($"The LoRA tuner takes a LoraConfig, got {peftConfig.GetType().Name}.");
        if (_configs.ContainsKey(name)) throw new ArgumentException($"Adapter '{name}' already exists.");
        if (_layers.Count == 0) config = Inject(name, config, autocastAdapterDtype, warning);
        else
        {
            config = config with { FanInFanOut = config.FanInFanOut || _layers.Values.Any(l => l.FanInFanOut) };
            foreach (var l in _layers.Values) { var active = l.ActiveAdapter; l.AddAdapter(name, config, autocastAdapterDtype); l.ActiveAdapter = active; }
        }
        _configs[name] = config;
        return config;
    }

    private LoraConfig Inject(string adapterName, LoraConfig config, bool autocastAdapterDtype, Action<string> warning)
    {
        var model = Model;
        var linears = LinearModules(model);
        var targets = SelectTargets(linears.Select(l => l.Path), config, model.Config.ModelType);
        var byPath = linears.ToDictionary(l => l.Path, l => l.Linear);
        if (!config.FanInFanOut && targets.Any(t => byPath[t].FanInFanOut))
        {
            warning("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
            config = config with { FanInFanOut = true };
        }
        foreach (var path in targets)
        {
            var original = (nn.Module<Tensor, Tensor>)ModuleSurgery.Get(model, path);
            var wrapper = new LoraLinear(original);
            ModuleSurgery.Replace(model, path, wrapper);
            wrapper.AddAdapter(adapterName, config, autocastAdapterDtype);
            _layers[path] = wrapper;
        }
        return config;
    }

    /// <inheritdoc/>
    public void DeleteAdapter(string name)
    {
        foreach (var l in _layers.Values) l.DeleteAdapter(name);
        _configs.Remove(name);
    }

    /// <inheritdoc/>
    public void SetAdapter(string name)
    {
        foreach (var l in _layers.Values) l.ActiveAdapter = name;
    }

    /// <inheritdoc/>
    public bool AdaptersDisabled
    {
        set { foreach (var l in _layers.Values) l.AdaptersDisabled = value; }
    }

    /// <summary>A and B of the adapter (and DoRA's magnitude), and the biases its bias mode trains (PEFT's _mark_only_adapters_as_trainable).</summary>
    public IEnumerable<Parameter> TrainableParameters(string adapter)
    {
        var config = _configs[adapter];
        foreach (var l in _layers.Values)
        {
            yield return l.LoraA(adapter);
            yield return l.LoraB(adapter);
            if (l.Magnitude(adapter) is { } m) yield return m; // DoRA
        }
        if (config.Bias == "all")
        {
            foreach (var (name, p) in Model.named_parameters())
                if (name.EndsWith("bias", StringComparison.Ordinal) && !ModulesToSaveWrapper.IsInside(name)) yield return p;
        }
        else if (config.Bias == "lora_only")
            foreach (var l in _layers.Values) if (l.bias is { } b) yield return b;
    }

    /// <inheritdoc/>
    public SortedDictionary<string, Tensor> StateDict(string adapter)
    {
        const string Prefix = PeftAdapterIO.Prefix;
        var config = _configs[adapter];
        var dict = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (path, l) in _layers)
        {
            dict[$"{Prefix}{path}.lora_A.weight"] = l.LoraA(adapter);
            dict[$"{Prefix}{path}.lora_B.weight"] = l.LoraB(adapter);
            if (l.Magnitude(adapter) is { } m) dict[$"{Prefix}{path}.lora_magnitude_vector"] = m; // PEFT drops ".weight" here
            if (config.Bias == "lora_only" && l.bias is { } b) dict[$"{Prefix}{path}.base_layer.bias"] = b;
        }
        if (config.Bias == "all")
            foreach (var (n, p) in PeftModel.DistinctParameters(Model))
                if (n.EndsWith("bias", StringComparison.Ordinal) && !ModulesToSaveWrapper.IsInside(n))
                    dict[Prefix + n] = p;
        return dict;
    }

    /// <inheritdoc/>
    public System.Text.Json.Nodes.JsonObject ConfigJson(string adapter)
    {
        var config = _configs[adapter];
        var targets = config.TargetModules is { } t ? t : _layers.Keys.Select(p => p.Split('.')[^1]).ToList();
        return LoraConfigJson.Write(config, targets);
    }

    /// <inheritdoc/>
    public void Merge(string adapter) { foreach (var l in _layers.Values) l.Merge(adapter); }
    /// <inheritdoc/>
    public void Unmerge() { foreach (var l in _layers.Values) l.Unmerge(); }

    /// <summary>Merges adapter <paramref name="mergeName"/> (when given) into the base weights and puts the original linears back (PEFT's merge_and_unload / unload).</summary>
    public void Unload(string? mergeName)
    {
        foreach (var (path, l) in _layers)
        {
            if (mergeName is not null) l.Merge(mergeName);
            ModuleSurgery.Replace(Model, path, l.BaseLayer);
        }
        _layers.Clear();
        _configs.Clear();
    }
}
