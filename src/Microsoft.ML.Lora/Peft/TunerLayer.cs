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
    /// <summary>The adapter used in forward, or null for none; a name this layer does not hold leaves it the wrapped module alone.</summary>
    string? ActiveAdapter { get; set; }
    /// <summary>Whether this layer holds weights of adapter <paramref name="name"/> (an adapter adapts only its own targets).</summary>
    bool HasAdapter(string name);
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
/// adapters and the wrapped layers by module path; adding an adapter (PEFT's inject_adapter: each of its targets is
/// wrapped, or added to when an earlier adapter wrapped it already; other layers never get it), deleting, activating,
/// disabling, merging, unmerging and unloading. A method says how it injects (<see cref="Inject"/>) and what its
/// adapter's parameters and saved tensors are.
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
    /// Adds adapter <paramref name="name"/> to the targets of its config (<see cref="Inject"/>), which may differ from
    /// earlier adapters' targets. The active adapter stays what it was, on every layer, new ones included (PEFT sets it
    /// again after inject_adapter, so a layer only the new adapter targets is not switched on). Random initial values
    /// come from the installed generator, else one seeded with 42, never from torch's global generator.
    /// </summary>
    public PeftConfig AddAdapter(string name, PeftConfig peftConfig, bool autocastAdapterDtype, Action<string> warning)
    {
        using var rng = Training.Rng.UseDefaultUnlessInstalled();
        if (peftConfig is not TConfig config) throw new ArgumentException($"This tuner takes a {typeof(TConfig).Name}, got {peftConfig.GetType().Name}.");
        if (_configs.ContainsKey(name)) throw new ArgumentException($"Adapter '{name}' already exists.");
        bool first = _configs.Count == 0;
        string? active = _layers.Values.Select(l => l.ActiveAdapter).FirstOrDefault(a => a is not null);
        config = Inject(name, config, autocastAdapterDtype, warning);
        if (!first) foreach (var l in _layers.Values) l.ActiveAdapter = active;
        _configs[name] = config;
        return config;
    }

    /// <summary>
    /// Adds adapter <paramref name="name"/> to the targets of <paramref name="config"/>: a target an earlier adapter
    /// wrapped gets it added (<see cref="TryGetLayer"/>), any other is wrapped (<see cref="Wrap"/>); returns the config
    /// as kept.
    /// </summary>
    protected abstract TConfig Inject(string name, TConfig config, bool autocastAdapterDtype, Action<string> warning);

    /// <summary>The layer wrapping the module at <paramref name="path"/>, when an adapter wrapped it already.</summary>
    protected bool TryGetLayer<T>(string path, out T layer) where T : ITunerLayer
    {
        if (_layers.TryGetValue(path, out var l) && l is T t) { layer = t; return true; }
        layer = default!;
        return false;
    }

    /// <summary>
    /// The wrapped layers of type <typeparamref name="T"/> that hold adapter <paramref name="name"/> (its targets), by
    /// module path, in wrapping order: what its parameters, state dict and saved target_modules come from.
    /// </summary>
    protected IEnumerable<(string Path, T Layer)> LayersHolding<T>(string name) where T : ITunerLayer =>
        _layers.Where(kv => kv.Value is T && kv.Value.HasAdapter(name)).Select(kv => (kv.Key, (T)kv.Value));

    /// <summary>Puts <paramref name="layer"/> in place of the module at <paramref name="path"/> and records it.</summary>
    protected void Wrap<T>(string path, T layer) where T : nn.Module, ITunerLayer
    {
        ModuleSurgery.Replace(Model, path, layer);
        _layers[path] = layer;
    }

    /// <inheritdoc/>
    public void DeleteAdapter(string name)
    {
        foreach (var l in _layers.Values) if (l.HasAdapter(name)) l.DeleteAdapter(name);
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
    public void Merge(string name)
    {
        if (!_configs.ContainsKey(name)) throw new ArgumentException($"Adapter '{name}' does not exist.");
        foreach (var l in _layers.Values) if (l.HasAdapter(name)) l.Merge(name);
    }
    /// <inheritdoc/>
    public void Unmerge() { foreach (var l in _layers.Values) l.Unmerge(); }

    /// <summary>Merges adapter <paramref name="mergeName"/> (when given) into the base weights and puts the original modules back (PEFT's merge_and_unload / unload).</summary>
    public CausalLm Unload(string? mergeName)
    {
        foreach (var (path, l) in _layers)
        {
            if (mergeName is not null && l.HasAdapter(mergeName)) l.Merge(mergeName);
            ModuleSurgery.Replace(Model, path, l.BaseLayer);
        }
        _layers.Clear();
        _configs.Clear();
        return Model;
    }
}
