using System.Globalization;
using Microsoft.ML.Lora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// A causal LM with named adapters of one PEFT method (PEFT's <c>PeftModel</c> / <c>get_peft_model</c>): the
/// method's tuner (<see cref="IPeftTuner"/>, chosen by the config's peft_type through <see cref="PeftMethods"/>)
/// injects its layers into the model in place; this class does what every method shares: modules_to_save, which
/// parameters train (the active adapter's own, everything else frozen), the parameter report, adapter files,
/// disabling, merging and unloading.
/// </summary>
internal sealed class PeftModel
{
    private readonly Dictionary<string, PeftConfig> _configs = new();
    private readonly Dictionary<string, ModulesToSaveWrapper> _saved = new();
    private readonly bool _autocastAdapterDtype;
    private readonly Action<string> _warning;

    private PeftModel(IPeftTuner tuner, bool autocastAdapterDtype, Action<string>? warning)
    {
        Tuner = tuner;
        _autocastAdapterDtype = autocastAdapterDtype;
        _warning = warning ?? Console.Error.WriteLine;
    }

    /// <summary>The method's tuner (LoRA's <see cref="LoraModel"/>, ...).</summary>
    public IPeftTuner Tuner { get; }
    /// <summary>The model the adapters are injected into (PEFT's get_base_model()).</summary>
    public CausalLm Model => Tuner.Model;
    /// <summary>The adapter used in forward and trained.</summary>
    public string ActiveAdapter { get; private set; } = "";
    /// <summary>The active adapter's config.</summary>
    public PeftConfig PeftConfig => _configs[ActiveAdapter];
    /// <summary>The configs of all adapters by name, as kept (a method may complete them).</summary>
    public IReadOnlyDictionary<string, PeftConfig> PeftConfigs => _configs;
    /// <summary>The peft_type of the adapters.</summary>
    public string PeftType => PeftConfig.PeftType;
    /// <summary>modules_to_save wrappers by module path.</summary>
    public IReadOnlyDictionary<string, ModulesToSaveWrapper> SavedModules => _saved;

    /// <summary>
    /// Injects adapter <paramref name="adapterName"/> of <paramref name="config"/>'s method into <paramref name="model"/>
    /// and freezes everything else (get_peft_model). With <paramref name="autocastAdapterDtype"/> (PEFT's default) the
    /// adapter weights of a bfloat16 or float16 model are float32. PEFT's warnings (e.g. fan_in_fan_out set for Conv1D
    /// targets) go to <paramref name="warning"/>, or to standard error when null.
    /// </summary>
    public static PeftModel GetPeftModel(CausalLm model, PeftConfig config, string adapterName = "default", bool autocastAdapterDtype = true,
        Action<string>? warning = null)
    {
        var peft = new PeftModel(PeftMethods.Get(config.PeftType).CreateTuner(model), autocastAdapterDtype, warning);
        foreach (var p in model.parameters()) p.requires_grad = false;
        peft.ActiveAdapter = adapterName;
        peft.AddAdapter(adapterName, config);
        return peft;
    }

    /// <summary>
    /// Loads the adapter folder (adapter_config.json + adapter_model.safetensors written by PEFT or this library)
    /// onto <paramref name="model"/> (PeftModel.from_pretrained). Not trainable unless <paramref name="isTrainable"/>.
    /// </summary>
    public static PeftModel FromPretrained(CausalLm model, string folder, string adapterName = "default", bool isTrainable = false)
    {
        var config = PeftAdapterIO.ReadConfig(folder) with { InferenceMode = !isTrainable };
        var peft = GetPeftModel(model, config, adapterName);
        PeftAdapterIO.LoadWeights(peft, folder, adapterName);
        return peft;
    }

    /// <summary>Adds another adapter of the same method (not active until <see cref="SetAdapter"/>).</summary>
    public void AddAdapter(string name, PeftConfig config)
    {
        if (_configs.Count > 0 && config.PeftType != PeftType)
            throw new ArgumentException($"Cannot combine adapters with different peft types: this model has {PeftType} adapters, '{name}' is {config.PeftType}.");
        if (_configs.ContainsKey(name)) throw new ArgumentException($"Adapter '{name}' already exists.");
        config.Validate();
        _configs[name] = Tuner.AddAdapter(name, config, _autocastAdapterDtype, _warning);
        WrapModulesToSave(name);
        SetTrainable(ActiveAdapter);
    }

    /// <summary>Reads an adapter folder into a new adapter <paramref name="name"/> (PeftModel.load_adapter); not trainable unless <paramref name="isTrainable"/>.</summary>
    public void LoadAdapter(string folder, string name, bool isTrainable = false)
    {
        AddAdapter(name, PeftAdapterIO.ReadConfig(folder) with { InferenceMode = !isTrainable });
        PeftAdapterIO.LoadWeights(this, folder, name);
    }

    /// <summary>Makes <paramref name="name"/> the adapter used in forward and the trainable one.</summary>
    public void SetAdapter(string name)
    {
        if (!_configs.ContainsKey(name)) throw new KeyNotFoundException($"No adapter '{name}'; adapters: {string.Join(", ", _configs.Keys)}.");
        Tuner.SetAdapter(name);
        foreach (var w in _saved.Values) w.ActiveAdapter = name;
        ActiveAdapter = name;
        SetTrainable(name);
    }

    /// <summary>Removes adapter <paramref name="name"/>; another becomes active if it was.</summary>
    public void DeleteAdapter(string name)
    {
        if (!_configs.ContainsKey(name)) throw new KeyNotFoundException($"No adapter '{name}'; adapters: {string.Join(", ", _configs.Keys)}.");
        Tuner.DeleteAdapter(name);
        _configs.Remove(name);
        if (ActiveAdapter == name && _configs.Count > 0) SetAdapter(_configs.Keys.First());
    }

    /// <summary>Wraps the modules matching the adapter's modules_to_save, or adds a copy to existing wrappers (PEFT's _set_trainable).</summary>
    private void WrapModulesToSave(string adapter)
    {
        if (_configs[adapter].ModulesToSave is not { Count: > 0 } names) return;
        var paths = Model.named_modules().Select(m => m.name)
            .Where(p => p.Length > 0 && !ModulesToSaveWrapper.IsInside(p) && names.Any(t => LoraConfig.SuffixMatch(p, t)))
            .ToList();
        if (paths.Count == 0)
            throw new ArgumentException($"modules_to_save [{string.Join(", ", names)}] matches no module of the {Model.Config.ModelType} model" +
                (Model.Config.TieWordEmbeddings ? " (a tied lm_head is the input embedding here, not a module of its own)." : "."));
        foreach (var path in paths)
        {
            if (_saved.TryGetValue(path, out var existing)) { existing.Update(adapter); continue; }
            if (ModuleSurgery.Get(Model, path) is not nn.Module<Tensor, Tensor> original)
                throw new NotSupportedException($"modules_to_save: '{path}' is not a single-input module.");
            var wrapper = new ModulesToSaveWrapper(original, adapter) { ActiveAdapter = ActiveAdapter };
            ModuleSurgery.Replace(Model, path, wrapper);
            _saved[path] = wrapper;
        }
    }

    /// <summary>
    /// Only <paramref name="adapter"/>'s own parameters (as its method names them) and its modules_to_save copies
    /// train; nothing does when the adapter is in inference mode (loaded without is_trainable).
    /// </summary>
    private void SetTrainable(string adapter)
    {
        foreach (var p in Model.parameters()) p.requires_grad = false;
        if (_configs[adapter].InferenceMode) return;
        foreach (var p in Tuner.TrainableParameters(adapter)) p.requires_grad = true;
        foreach (var w in _saved.Values)
            if (w.Has(adapter)) foreach (var p in w.Copy(adapter).parameters()) p.requires_grad = true;
    }

    /// <summary>Logits [batch, time, vocab] with the active adapter (see <see cref="CausalLm.Forward"/>).</summary>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, Generation.KvCache? cache = null) =>
        Tuner.Forward(inputIds, attentionMask, positionIds, cache);

    /// <summary>
    /// The adapter's tensors by the key PEFT saves them under: the method's state dict plus the adapter's
    /// modules_to_save copies under the wrapped module's own path (PEFT drops "modules_to_save.&lt;adapter&gt;").
    /// </summary>
    public SortedDictionary<string, Tensor> StateDict(string? adapter = null)
    {
        adapter ??= ActiveAdapter;
        var dict = Tuner.StateDict(adapter);
        foreach (var (path, w) in _saved)
            if (w.Has(adapter))
                foreach (var (n, p) in w.Copy(adapter).named_parameters())
                    dict[$"{PeftAdapterIO.Prefix}{path}.{n}"] = p;
        return dict;
    }

    /// <summary>Writes the active (or the named) adapter as a PEFT folder (save_pretrained).</summary>
    public void SavePretrained(string folder, string? adapter = null) => PeftAdapterIO.Save(this, folder, adapter);

    /// <summary>Distinct parameters (tied weights counted once) with their first name.</summary>
    public static List<(string Name, Parameter P)> DistinctParameters(nn.Module model)
    {
        var seen = new HashSet<IntPtr>();
        var list = new List<(string, Parameter)>();
        foreach (var (n, p) in model.named_parameters()) if (seen.Add(p.Handle)) list.Add((n, p));
        return list;
    }

    /// <summary>The parameters that train, in the model's order.</summary>
    public List<(string Name, Parameter P)> TrainableParameters() => DistinctParameters(Model).Where(p => p.P.requires_grad).ToList();

    /// <summary>(trainable, all) parameter counts as PEFT's get_nb_trainable_parameters.</summary>
    public (long Trainable, long All) GetNbTrainableParameters()
    {
        var ps = DistinctParameters(Model);
        // A uint8 parameter is a 4-bit weight packed two to a byte: PEFT counts Params4bit as numel * 2.
        static long Count(Parameter p) => p.dtype == ScalarType.Byte ? 2 * p.numel() : p.numel();
        return (ps.Where(p => p.P.requires_grad).Sum(p => Count(p.P)), ps.Sum(p => Count(p.P)));
    }

    /// <summary>PEFT's print_trainable_parameters line.</summary>
    public string TrainableReport()
    {
        var (t, a) = GetNbTrainableParameters();
        return FormatReport(t, a);
    }

    /// <summary>The line of PEFT's print_trainable_parameters for these counts.</summary>
    public static string FormatReport(long trainable, long all) =>
        string.Create(CultureInfo.InvariantCulture, $"trainable params: {trainable:N0} || all params: {all:N0} || trainable%: {100.0 * trainable / all:F4}");

    /// <summary>Adds the active adapter into the base weights (merge_adapter).</summary>
    public void Merge() => Tuner.Merge(ActiveAdapter);
    /// <summary>Takes merged adapters out of the base weights (unmerge_adapter).</summary>
    public void Unmerge() => Tuner.Unmerge();

    /// <summary>Runs the base model without adapters until the returned scope is disposed (PEFT's disable_adapter()).</summary>
    public IDisposable DisableAdapters()
    {
        SetDisabled(true);
        return new Restore(() => SetDisabled(false));
    }

    private void SetDisabled(bool disabled)
    {
        Tuner.AdaptersDisabled = disabled;
        foreach (var w in _saved.Values) w.AdaptersDisabled = disabled;
    }

    /// <summary>Merges the active adapter into the base weights and puts the original modules back (merge_and_unload).</summary>
    public CausalLm MergeAndUnload() => Unload(merge: true);

    /// <summary>Puts the original modules back without merging (unload): the plain base model.</summary>
    public CausalLm Unload() => Unload(merge: false);

    private CausalLm Unload(bool merge)
    {
        var adapter = ActiveAdapter;
        Tuner.Unload(merge ? adapter : null);
        foreach (var (path, w) in _saved)
            ModuleSurgery.Replace(Model, path, merge && w.Has(adapter) ? w.Copy(adapter) : w.OriginalModule);
        _saved.Clear();
        _configs.Clear();
        return Model;
    }

    private sealed class Restore(Action a) : IDisposable { public void Dispose() => a(); }
}
