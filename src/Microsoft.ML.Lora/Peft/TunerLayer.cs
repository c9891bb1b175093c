using Microsoft.ML.Lora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// An adapter layer that wraps one module of the model (PEFT's <c>BaseTunerLayer</c>: LoRA's Linear and Embedding,
/// IA3's Linear): it holds one set of weights per adapter name, one of which is active, and can fold it into the
/// wrapped module's weights.
/// </summary>
internal interface ITunerLayer
{
    /// <summary>The wrapped module, put back by unload.</summary>
    nn.Module BaseLayer { get; }
    /// <summary>The adapter used in forward, or null for none.</summary>
    string? ActiveAdapter { get; set; }
    /// <summary>When true, forward is the wrapped module's alone (PEFT's disable_adapter()).</summary>
    bool AdaptersDisabled { set; }
    /// <summary>Removes the adapter's weights (it must not be merged); another becomes active if it was.</summary>
    void DeleteAdapter(string name);
    /// <summary>Folds the adapter into the wrapped module's weights; forward then skips it.</summary>
    void Merge(string? adapter = null);
    /// <summary>Takes every merged adapter out of the wrapped module's weights again.</summary>
    void Unmerge();
}

/// <summary>
/// What every method that wraps modules of the model shares (PEFT's <c>BaseTuner</c> bookkeeping): the configs of the
/// adapters and the wrapped layers by module path; adding an adapter (the first one injects the layers, later ones go
/// into the same layers), deleting, activating, disabling, merging, unmerging and unloading. A method says how it
/// injects and adds (<see cref="Inject"/>, <see cref="AddToLayers"/>) and what its adapter's parameters and saved
/// tensors are.
/// </summary>
/// <typeparam name="TConfig">The method's config type.</typeparam>
internal abstract class LayerTuner<TConfig>(CausalLm model) : IPeftTuner where TConfig : PeftConfig
{
    private readonly Dictionary<string, TConfig> _configs = new();
    private readonly Dictionary<string, ITunerLayer> _layers = new();

    /// <inheritdoc/>
    public CausalLm Model { get; } = model;
    /// <summary>The configs of the adapters, as kept (completed by the method).</summary>
    public IReadOnlyDictionary<string, TConfig> Configs => _configs;
    /// <summary>Every wrapped layer by module path (the path of the original module).</summary>
    protected IReadOnlyDictionary<string, ITunerLayer> AllLayers => _layers;

    /// <summary>The wrapped layers of type <typeparamref name="T"/> by module path, in wrapping order.</summary>
    protected IReadOnlyDictionary<string, T> LayersOf<T>() where T : ITunerLayer =>
        _layers.Where(kv => kv.Value is T).ToDictionary(kv => kv.Key, kv => (T)kv.Value);

    /// <summary>
    /// Adds adapter <paramref name="name"/>: the first wraps the targets of its config (<see cref="Inject"/>), later ones
    /// are added to the same layers (<see cref="AddToLayers"/>) without changing their active adapter. Random initial
    /// values come from the installed generator, else one seeded with 42, never from torch's global generator.
    /// </summary>
    public PeftConfig AddAdapter(string name, PeftConfig peftConfig, bool autocastAdapterDtype, Action<string> warning)
    {
        using var rng = Training.Rng.UseDefaultUnlessInstalled();
        if (peftConfig is not TConfig config) throw new ArgumentException($"This tuner takes a {typeof(TConfig).Name}, got {peftConfig.GetType().Name}.");
        if (_configs.ContainsKey(name)) throw new ArgumentException($"Adapter '{name}' already exists.");
        if (_layers.Count == 0) config = Inject(name, config, autocastAdapterDtype, warning);
        else
        {
            var active = _layers.Values.Select(l => l.ActiveAdapter).ToList();
            config = AddToLayers(name, config, autocastAdapterDtype);
            foreach (var (l, a) in _layers.Values.Zip(active)) l.ActiveAdapter = a;
        }
        _configs[name] = config;
        return config;
    }

    /// <summary>Wraps the targets of <paramref name="config"/> (each with <see cref="Wrap"/>) for the first adapter; returns the config as kept.</summary>
    protected abstract TConfig Inject(string name, TConfig config, bool autocastAdapterDtype, Action<string> warning);

    /// <summary>Adds adapter <paramref name="name"/> to every wrapped layer; returns the config as kept.</summary>
    protected abstract TConfig AddToLayers(string name, TConfig config, bool autocastAdapterDtype);

    /// <summary>Puts <paramref name="layer"/> in place of the module at <paramref name="path"/> and records it.</summary>
    protected void Wrap<T>(string path, T layer) where T : nn.Module, ITunerLayer
    {
        ModuleSurgery.Replace(Model, path, layer);
        _layers[path] = layer;
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

    /// <inheritdoc/>
    public abstract IEnumerable<Parameter> TrainableParameters(string name);
    /// <inheritdoc/>
    public abstract SortedDictionary<string, Tensor> StateDict(string name);
    /// <inheritdoc/>
    public abstract System.Text.Json.Nodes.JsonObject ConfigJson(string name);

    /// <inheritdoc/>
    public void Merge(string name) { foreach (var l in _layers.Values) l.Merge(name); }
    /// <inheritdoc/>
    public void Unmerge() { foreach (var l in _layers.Values) l.Unmerge(); }

    /// <summary>Merges adapter <paramref name="mergeName"/> (when given) into the base weights and puts the original modules back (PEFT's merge_and_unload / unload).</summary>
    public CausalLm Unload(string? mergeName)
    {
        foreach (var (path, l) in _layers)
        {
            if (mergeName is not null) l.Merge(mergeName);
            ModuleSurgery.Replace(Model, path, l.BaseLayer);
        }
        _layers.Clear();
        _configs.Clear();
        return Model;
    }
}
