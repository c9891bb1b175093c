using System.Globalization;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// A causal LM with named adapters of one PEFT method (PEFT's <c>PeftModel</c>): make one with
/// <see cref="GetPeftModel"/> (a new adapter from a config such as <see cref="LoraConfig"/>) or <see cref="FromPretrained"/>
/// (an adapter folder written by PEFT or by <see cref="SavePretrained"/>). The adapter layers are injected into the
/// <see cref="CausalLm"/> in place: everything but the active adapter's own parameters is frozen, <see cref="Forward"/>
/// and <see cref="Generate(IReadOnlyList{int}, GenerationOptions)"/> run with the active adapter, and
/// <see cref="MergeAndUnload"/> returns the plain model with the adapter folded into its weights.
/// </summary>
/// <remarks>
/// Internally the method's tuner (PEFT's <c>tuners/&lt;method&gt;</c>, chosen by the config's <c>peft_type</c> through
/// the method registry) injects its layers; this class does what every method shares: modules_to_save, trainability,
/// the parameter report, adapter files, disabling, merging and unloading.
/// </remarks>
public sealed class PeftModel
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
    internal IPeftTuner Tuner { get; }
    /// <summary>The model the adapters are injected into.</summary>
    internal CausalLm Model => Tuner.Model;

    /// <summary>
    /// The model the adapter layers are injected into (PEFT's <c>get_base_model()</c>); it runs with the active adapter.
    /// For the prompt-learning methods it is the base model wrapped with the virtual tokens in front.
    /// </summary>
    public CausalLm GetBaseModel() => Model;
    /// <summary>The name of the adapter used in forward and trained (PEFT's <c>active_adapter</c>).</summary>
    public string ActiveAdapter { get; private set; } = "";
    /// <summary>The active adapter's config (PEFT's <c>peft_config[active_adapter]</c>).</summary>
    public PeftConfig PeftConfig => _configs[ActiveAdapter];
    /// <summary>The configs of all adapters by name, as kept (a method may complete them).</summary>
    public IReadOnlyDictionary<string, PeftConfig> PeftConfigs => _configs;
    /// <summary>The <c>peft_type</c> of the adapters ("LORA", "IA3", ...).</summary>
    public string PeftType => PeftConfig.PeftType;
    /// <summary>modules_to_save wrappers by module path.</summary>
    internal IReadOnlyDictionary<string, ModulesToSaveWrapper> SavedModules => _saved;

    /// <summary>
    /// Injects a new adapter <paramref name="adapterName"/> of <paramref name="config"/>'s method into
    /// <paramref name="model"/> (in place) and freezes everything else (PEFT's <c>get_peft_model</c>). The initialisation never draws from
    /// torch's global generator: it uses the generator of the running Fit (seeded with its <c>Seed</c>), else one seeded
    /// with 42, so the same config gives the same adapter in any concurrency.
    /// </summary>
    /// <param name="model">The base model; it is modified in place.</param>
    /// <param name="config">The adapter's configuration (<see cref="LoraConfig"/>, ...).</param>
    /// <param name="adapterName">The adapter's name (default "default", as PEFT).</param>
    /// <param name="autocastAdapterDtype">Float32 adapter weights over a bfloat16 or float16 model (PEFT's autocast_adapter_dtype, default true).</param>
    /// <param name="warning">Where PEFT's warnings go (e.g. fan_in_fan_out set for Conv1D targets); null writes them to standard error.</param>
    /// <exception cref="ArgumentException">The config is invalid or its targets are not in the model (the message lists the model's modules).</exception>
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
    /// Loads an adapter folder (adapter_config.json + adapter_model.safetensors, written by PEFT or by
    /// <see cref="SavePretrained"/>) onto <paramref name="model"/> (PEFT's <c>PeftModel.from_pretrained</c>).
    /// </summary>
    /// <param name="model">The base model the adapter was trained on; it is modified in place.</param>
    /// <param name="folder">The adapter folder.</param>
    /// <param name="adapterName">The name to give the adapter (default "default").</param>
    /// <param name="isTrainable">Train it further (false, as PEFT: loaded for inference, nothing trains).</param>
    /// <exception cref="PeftConfigException">adapter_config.json is missing, malformed, or has a peft_type or field that is not supported.</exception>
    /// <exception cref="AdapterLoadException">adapter_model.safetensors is missing, malformed, or does not fit the model (a key missing or unexpected, a shape differs).</exception>
    /// <exception cref="ArgumentException"><paramref name="isTrainable"/> with a prompt-learning adapter (PEFT refuses it too: the folder holds only the prompt, not its encoder).</exception>
    public static PeftModel FromPretrained(CausalLm model, string folder, string adapterName = "default", bool isTrainable = false)
    {
        var config = LoadedConfig(folder, isTrainable);
        var peft = GetPeftModel(model, config, adapterName);
        PeftAdapterIO.LoadWeights(peft, folder, adapterName);
        return peft;
    }

    /// <summary>Adds another adapter of the same method (PEFT's <c>add_adapter</c>); it is not active until <see cref="SetAdapter"/>.</summary>
    /// <param name="name">The new adapter's name.</param>
    /// <param name="config">Its configuration, of the same method as the adapters already held.</param>
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

    /// <summary>Reads an adapter folder into a new adapter <paramref name="name"/> (PEFT's <c>load_adapter</c>); it is not active until <see cref="SetAdapter"/>.</summary>
    /// <param name="folder">The adapter folder.</param>
    /// <param name="name">The new adapter's name.</param>
    /// <param name="isTrainable">Train it when it is made active (false: loaded for inference).</param>
    /// <exception cref="PeftConfigException">adapter_config.json is missing, malformed or not supported.</exception>
    /// <exception cref="AdapterLoadException">adapter_model.safetensors is missing, malformed or does not fit the model.</exception>
    /// <exception cref="ArgumentException"><paramref name="isTrainable"/> with a prompt-learning adapter (as PEFT).</exception>
    public void LoadAdapter(string folder, string name, bool isTrainable = false)
    {
        AddAdapter(name, LoadedConfig(folder, isTrainable));
        PeftAdapterIO.LoadWeights(this, folder, name);
    }

    /// <summary>
    /// The config of an adapter folder, in inference mode unless <paramref name="isTrainable"/>. As PEFT, a prompt-learning
    /// adapter cannot be loaded trainable: its folder holds only the prompt its encoder produced, not the encoder.
    /// </summary>
    private static PeftConfig LoadedConfig(string folder, bool isTrainable)
    {
        var config = PeftAdapterIO.ReadConfig(folder);
        if (config is PromptLearningConfig && isTrainable)
            throw new ArgumentException($"Cannot set a prompt learning adapter to trainable when loading pretrained adapter. '{folder}' is {config.PeftType}: it holds only the prompt its encoder produced; start a new adapter with GetPeftModel to train.");
        return config with { InferenceMode = !isTrainable };
    }

    /// <summary>Makes <paramref name="name"/> the adapter used in forward and the trained one (PEFT's <c>set_adapter</c>).</summary>
    /// <param name="name">An adapter held by this model.</param>
    public void SetAdapter(string name)
    {
        if (!_configs.ContainsKey(name)) throw new KeyNotFoundException($"No adapter '{name}'; adapters: {string.Join(", ", _configs.Keys)}.");
        Tuner.SetAdapter(name);
        foreach (var w in _saved.Values) w.ActiveAdapter = name;
        ActiveAdapter = name;
        SetTrainable(name);
    }

    /// <summary>Removes adapter <paramref name="name"/> (PEFT's <c>delete_adapter</c>); another becomes active if it was.</summary>
    /// <param name="name">An adapter held by this model.</param>
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
    /// <param name="inputIds">Token ids [batch, time].</param>
    /// <param name="attentionMask">[batch, past + time], 1 = token, 0 = padding; null for all ones.</param>
    /// <param name="positionIds">Positions [batch, time]; null derives them from the mask.</param>
    /// <param name="cache">Keys and values of earlier calls, or null.</param>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, Generation.KvCache? cache = null) =>
        Tuner.Forward(inputIds, attentionMask, positionIds, cache);

    /// <summary>
    /// Labels for the logits of <see cref="Forward"/>: n × -100 in front when the active adapter puts n virtual tokens
    /// in front of the input (prompt tuning, P-tuning), as PEFT's forward does; otherwise the labels themselves.
    /// </summary>
    internal Tensor LossLabels(Tensor labels) => Tuner.VirtualTokenPositions is int n and > 0
        ? cat([full(labels.shape[0], n, Training.CausalLmLoss.IgnoreIndex, dtype: labels.dtype, device: labels.device), labels], 1)
        : labels;

    /// <summary>
    /// The label tokens of <paramref name="batch"/> that count in the loss of <see cref="Forward"/>'s logits. After n ≥ 1
    /// virtual tokens every label counts, the first too (the last virtual token predicts it); otherwise the shifted
    /// labels count (the collator's number).
    /// </summary>
    internal long CountLabelTokens(Training.Batch batch)
    {
        if (Tuner.VirtualTokenPositions == 0) return batch.CountLabelTokens();
        using var valid = batch.Labels.ne(Training.CausalLmLoss.IgnoreIndex);
        using var sum = valid.sum();
        return sum.item<long>();
    }

    /// <summary>
    /// The summed causal-LM loss of a batch with the active adapter and its number of label tokens (virtual tokens'
    /// -100 labels prepended by <see cref="LossLabels"/>), without the whole batch's logits
    /// (<see cref="CausalLm.LossSum"/>); the tensors belong to the caller's dispose scope.
    /// </summary>
    internal (Tensor Sum, long Count) LossSum(Tensor inputIds, Tensor? attentionMask, Tensor labels) =>
        Tuner.LossSum(inputIds, attentionMask, LossLabels(labels));

    /// <summary>
    /// The adapter's tensors by the key PEFT saves them under: the method's state dict plus the adapter's
    /// modules_to_save copies under the wrapped module's own path (PEFT drops "modules_to_save.&lt;adapter&gt;").
    /// </summary>
    internal SortedDictionary<string, Tensor> StateDict(string? adapter = null)
    {
        adapter ??= ActiveAdapter;
        var dict = Tuner.StateDict(adapter);
        foreach (var (path, w) in _saved)
            if (w.Has(adapter))
                foreach (var (n, p) in w.Copy(adapter).named_parameters())
                    dict[$"{PeftAdapterIO.Prefix}{path}.{n}"] = p;
        return dict;
    }

    /// <summary>
    /// Writes the adapters as PEFT does (<c>save_pretrained</c>): adapter_config.json and adapter_model.safetensors (only
    /// the adapter's tensors) into <paramref name="folder"/> for the adapter named "default", into
    /// <c>folder/&lt;name&gt;</c> for any other. Each file is complete on disk before it replaces an earlier one.
    /// </summary>
    /// <param name="folder">The folder to write (created when absent).</param>
    /// <param name="selectedAdapters">The adapters to save; null for all.</param>
    public void SavePretrained(string folder, IEnumerable<string>? selectedAdapters = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        foreach (var name in selectedAdapters?.ToList() ?? [.. _configs.Keys])
        {
            if (!_configs.ContainsKey(name)) throw new KeyNotFoundException($"No adapter '{name}'; adapters: {string.Join(", ", _configs.Keys)}.");
            PeftAdapterIO.Save(this, name == DefaultAdapterName ? folder : Path.Combine(folder, name), name);
        }
    }

    /// <summary>PEFT's default adapter name, saved at the root of the folder.</summary>
    public const string DefaultAdapterName = "default";

    /// <summary>Distinct parameters (tied weights counted once) with their first name.</summary>
    internal static List<(string Name, Parameter P)> DistinctParameters(nn.Module model)
    {
        var seen = new HashSet<IntPtr>();
        var list = new List<(string, Parameter)>();
        foreach (var (n, p) in model.named_parameters()) if (seen.Add(p.Handle)) list.Add((n, p));
        return list;
    }

    /// <summary>The parameters that train, in the model's order.</summary>
    internal List<(string Name, Parameter P)> TrainableParameters() => DistinctParameters(Model).Where(p => p.P.requires_grad).ToList();

    /// <summary>(trainable, all) parameter counts as PEFT's <c>get_nb_trainable_parameters</c> (tied weights counted once).</summary>
    public (long Trainable, long All) GetNbTrainableParameters()
    {
        var ps = DistinctParameters(Model);
        // A uint8 parameter is a 4-bit weight packed two to a byte: PEFT counts Params4bit as numel * 2.
        static long Count(Parameter p) => p.dtype == ScalarType.Byte ? 2 * p.numel() : p.numel();
        return (ps.Where(p => p.P.requires_grad).Sum(p => Count(p.P)), ps.Sum(p => Count(p.P)));
    }

    /// <summary>
    /// Writes PEFT's <c>print_trainable_parameters</c> line ("trainable params: 2,048 || all params: 31,360 ||
    /// trainable%: 6.5306") to <paramref name="writer"/> (the console when null).
    /// </summary>
    /// <param name="writer">Where to write the line; null for <see cref="Console.Out"/>.</param>
    public void PrintTrainableParameters(TextWriter? writer = null) => (writer ?? Console.Out).WriteLine(TrainableReport());

    /// <summary>PEFT's print_trainable_parameters line.</summary>
    internal string TrainableReport()
    {
        var (t, a) = GetNbTrainableParameters();
        return FormatReport(t, a);
    }

    /// <summary>The line of PEFT's print_trainable_parameters for these counts.</summary>
    internal static string FormatReport(long trainable, long all) =>
        string.Create(CultureInfo.InvariantCulture, $"trainable params: {trainable:N0} || all params: {all:N0} || trainable%: {100.0 * trainable / all:F4}");

    /// <summary>Adds the active adapter into the base weights (PEFT's <c>merge_adapter</c>); forward then skips the adapter layers. <see cref="UnmergeAdapter"/> undoes it.</summary>
    public void MergeAdapter() => Tuner.Merge(ActiveAdapter);
    /// <summary>Takes merged adapters out of the base weights again (PEFT's <c>unmerge_adapter</c>).</summary>
    public void UnmergeAdapter() => Tuner.Unmerge();

    /// <summary>
    /// Runs the base model without adapters until the returned scope is disposed (PEFT's <c>with model.disable_adapter():</c>):
    /// <c>using (peft.DisableAdapter()) { ... }</c>.
    /// </summary>
    public IDisposable DisableAdapter()
    {
        SetDisabled(true);
        return new Undo(() => SetDisabled(false));
    }

    private void SetDisabled(bool disabled)
    {
        Tuner.AdaptersDisabled = disabled;
        foreach (var w in _saved.Values) w.AdaptersDisabled = disabled;
    }

    /// <summary>
    /// Merges the active adapter into the base weights and puts the original modules back (PEFT's
    /// <c>merge_and_unload</c>): the plain model, which <see cref="CausalLm.SavePretrained"/> writes as a Hugging Face
    /// folder. This <see cref="PeftModel"/> holds no adapter afterwards.
    /// </summary>
    public CausalLm MergeAndUnload() => Unload(merge: true);

    /// <summary>Puts the original modules back without merging (PEFT's <c>unload</c>): the base model as it was.</summary>
    public CausalLm Unload() => Unload(merge: false);

    /// <summary>Generated tokens (prompt excluded) of one prompt with the active adapter (see <see cref="CausalLm.Generate(IReadOnlyList{int}, GenerationOptions)"/>).</summary>
    /// <param name="prompt">Prompt token ids.</param>
    /// <param name="options">Decoding settings; null for greedy, 32 new tokens, the model's EOS.</param>
    public IReadOnlyList<int> Generate(IReadOnlyList<int> prompt, GenerationOptions? options = null) => Model.Generate(prompt, options);

    /// <summary>Generated tokens (prompts excluded) of each prompt with the active adapter; the prompts are left-padded into one batch.</summary>
    /// <param name="prompts">Prompt token ids, one list per row.</param>
    /// <param name="options">Decoding settings; null for greedy, 32 new tokens, the model's EOS.</param>
    public IReadOnlyList<IReadOnlyList<int>> Generate(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions? options = null) => Model.Generate(prompts, options);

    private CausalLm Unload(bool merge)
    {
        var adapter = ActiveAdapter;
        var model = Tuner.Unload(merge ? adapter : null);
        foreach (var (path, w) in _saved)
            ModuleSurgery.Replace(model, path, merge && w.Has(adapter) ? w.Copy(adapter) : w.OriginalModule);
        _saved.Clear();
        _configs.Clear();
        return model;
    }
}
