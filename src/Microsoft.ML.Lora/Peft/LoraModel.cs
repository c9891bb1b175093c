using System.Globalization;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// LoRA applied to a <see cref="CausalLm"/> in place (PEFT's LoraModel / get_peft_model): targets are wrapped in
/// <see cref="LoraLinear"/>, every base parameter is frozen, and the adapter parameters are trainable.
/// </summary>
internal sealed class LoraModel
{
    private readonly Dictionary<string, LoraConfig> _configs = new();

    public CausalLm Model { get; }
    /// <summary>Wrapped layers by module path (the path of the original linear).</summary>
    public IReadOnlyDictionary<string, LoraLinear> Layers { get; }
    public string ActiveAdapter { get; private set; }
    public LoraConfig Config => _configs[ActiveAdapter];
    public IReadOnlyDictionary<string, LoraConfig> Configs => _configs;
    /// <summary>Wrapped embeddings by module path (PEFT's LoRA Embedding layer).</summary>
    public IReadOnlyDictionary<string, LoraEmbedding> Embeddings => _embeddings;
    private readonly Dictionary<string, LoraEmbedding> _embeddings = new();
    /// <summary>modules_to_save wrappers by module path.</summary>
    public IReadOnlyDictionary<string, ModulesToSaveWrapper> SavedModules => _saved;
    private readonly Dictionary<string, ModulesToSaveWrapper> _saved = new();

    private LoraModel(CausalLm model, Dictionary<string, LoraLinear> layers, string adapter)
    {
        Model = model; Layers = layers; ActiveAdapter = adapter;
    }

    /// <summary>Names of the linear layers of <paramref name="model"/> (what target_modules can match).</summary>
    public static List<(string Path, ILinear Linear)> LinearModules(nn.Module model) =>
        model.named_modules().Where(m => m.module is ILinear && m.module is not LoraLinear && !m.name.Contains(".base_layer", StringComparison.Ordinal) && !m.name.StartsWith("base_layer", StringComparison.Ordinal))
            .Select(m => (m.name, (ILinear)m.module)).ToList();

    /// <summary>The paths <paramref name="config"/> selects on a model with these linear paths.</summary>
    public static List<string> SelectTargets(IEnumerable<string> linearPaths, LoraConfig config, string modelType)
    {
        var paths = linearPaths.ToList();
        return Select(paths, paths, config, modelType).Targets;
    }

    /// <summary>
    /// PEFT's target selection over the module paths of a model: the default targets of the model type when none are
    /// given, "all-linear" resolved to the linear paths (lm_head excepted), then <see cref="LoraTargets.IsTarget"/>.
    /// Returns the config as it is saved (targets resolved) and the selected paths.
    /// </summary>
    public static (LoraConfig Config, List<string> Targets) Select(IReadOnlyList<string> modulePaths, IReadOnlyList<string> linearPaths, LoraConfig config, string modelType)
    {
        config.Validate();
        if (config.TargetModules is null && config.TargetModulesRegex is null) config = config with { TargetModules = LoraConfig.DefaultTargets(modelType) };
        config = LoraTargets.ResolveAllLinear(config, linearPaths);
        var selected = modulePaths.Where(p => p.Length > 0 && LoraTargets.IsTarget(config, p)).ToList();
        if (selected.Count == 0)
        {
            var names = linearPaths.Select(p => System.Text.RegularExpressions.Regex.Replace(p, @"\.\d+\.", ".N.")).Distinct();
            var targets = config.TargetModulesRegex is { } regex ? $"'{regex}' (a regular expression matched against the whole path)" : $"[{string.Join(", ", config.TargetModules!)}]";
            throw new ArgumentException(
                $"Target modules {targets} not found in the {modelType} model" +
                (config.LayersToTransform is null ? "" : $" (layers_to_transform [{string.Join(", ", config.LayersToTransform)}]" +
                    (config.LayersPattern is null ? ")" : $", layers_pattern [{string.Join(", ", config.LayersPattern)}])")) +
                $". Its linear modules are: {string.Join(", ", names)}.");
        }
        return (config, selected);
    }

    /// <summary>Module paths of <paramref name="model"/> that target_modules can match (none inside an adapter wrapper).</summary>
    private static List<(string Path, nn.Module Module)> CandidateModules(nn.Module model) =>
        model.named_modules().Where(m => m.name.Length > 0 && !m.name.Contains("base_layer", StringComparison.Ordinal)
                && !m.name.Contains("lora_", StringComparison.Ordinal) && !ModulesToSaveWrapper.IsInside(m.name))
            .Select(m => (m.name, m.module)).ToList();

    /// <summary>
    /// Wraps the targets of <paramref name="config"/> and freezes the rest (get_peft_model). With
    /// <paramref name="autocastAdapterDtype"/> (PEFT's default) the adapter weights of a bfloat16 or float16 model are
    /// float32, so the optimizer updates full-precision weights while the base stays in half precision.
    /// </summary>
    /// <param name="model">The base model; its targets are replaced in place.</param>
    /// <param name="config">The adapter's configuration.</param>
    /// <param name="adapterName">Name of the adapter.</param>
    /// <param name="autocastAdapterDtype">Keep the adapter weights of a half-precision model in float32.</param>
    /// <param name="warning">Where PEFT's warnings go (e.g. fan_in_fan_out set for Conv1D targets); null writes them to standard error.</param>
    public static LoraModel Apply(CausalLm model, LoraConfig config, string adapterName = "default", bool autocastAdapterDtype = true, Action<string>? warning = null)
    {
        var modules = CandidateModules(model);
        var linears = LinearModules(model);
        RefuseTiedHead(model, config with { TargetModules = config.TargetModules ?? (config.TargetModulesRegex is null ? LoraConfig.DefaultTargets(model.Config.ModelType) : null) }, modules);
        (config, var targets) = Select([.. modules.Select(m => m.Path)], [.. linears.Select(l => l.Path)], config, model.Config.ModelType);
        var byPath = modules.ToDictionary(m => m.Path, m => m.Module);
        foreach (var t in targets)
            if (byPath[t] is not (ILinear or Embedding))
                throw new NotSupportedException($"Target module '{t}' is a {byPath[t].GetName()}; LoRA adapts linear layers (Linear, Conv1D) and embeddings, as PEFT. " +
                    "Name the layers inside it instead (set TargetModules).");
        if (!config.FanInFanOut && targets.Any(t => byPath[t] is ILinear { FanInFanOut: true }))
        {
            (warning ?? Console.Error.WriteLine)("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
            config = config with { FanInFanOut = true };
        }
        foreach (var p in model.parameters()) p.requires_grad = false;
        using var rng = Training.Rng.UseDefaultUnlessInstalled(); // the init depends on a seed, never on torch's global generator
        var layers = new Dictionary<string, LoraLinear>();
        var embeddings = new Dictionary<string, LoraEmbedding>();
        foreach (var path in targets.Where(t => byPath[t] is Embedding))
        {
            var wrapper = new LoraEmbedding((Embedding)byPath[path], EmbeddingPaddingIdx(model.Config));
            try { ModuleSurgery.Replace(model, path, wrapper); }
            catch (InvalidOperationException e)
            { throw new NotSupportedException($"Target module '{path}': LoRA on the embedding of a {model.Config.ModelType} model is not supported ({e.Message})", e); }
            wrapper.AddAdapter(adapterName, config.ForModule(path), autocastAdapterDtype);
            embeddings[path] = wrapper;
        }
        foreach (var path in targets.Where(t => byPath[t] is ILinear))
        {
            var original = (nn.Module<Tensor, Tensor>)ModuleSurgery.Get(model, path);
            var wrapper = new LoraLinear(original);
            ModuleSurgery.Replace(model, path, wrapper);
            wrapper.AddAdapter(adapterName, config.ForModule(path), autocastAdapterDtype);
            layers[path] = wrapper;
        }
        var lm = new LoraModel(model, layers, adapterName);
        foreach (var (path, e) in embeddings) lm._embeddings[path] = e;
        lm._configs[adapterName] = config;
        lm.WrapModulesToSave(adapterName);
        lm.SetTrainable(adapterName);
        return lm;
    }

    /// <summary>
    /// The padding_idx transformers gives the input embedding: pad_token_id for the LLaMA-style models, none for GPT-2 and
    /// BLOOM. The LoRA lookup of that row gets no gradient (F.embedding with padding_idx).
    /// </summary>
    private static long? EmbeddingPaddingIdx(ModelConfig c) => c.ModelType is "gpt2" or "bloom" ? null : c.PadTokenId;

    /// <summary>A target that names lm_head on a model whose head is the input embedding is refused: there is no separate layer.</summary>
    private static void RefuseTiedHead(CausalLm model, LoraConfig config, List<(string Path, nn.Module Module)> modules)
    {
        if (modules.Any(m => m.Path == "lm_head") || !model.Config.TieWordEmbeddings || config.TargetModules is null && config.TargetModulesRegex is null) return;
        if (config.IsAllLinear || !LoraTargets.IsTarget(config, "lm_head")) return;
        throw new NotSupportedException($"Target module 'lm_head' cannot be adapted: the {model.Config.ModelType} model ties lm_head to its input embedding " +
            "(tie_word_embeddings: true), so the output layer is not a module of its own and a LoRA on it would also change the input embedding. " +
            "Remove lm_head from the target modules.");
    }

    /// <summary>Adds another adapter on the same targets (not active until <see cref="SetAdapter"/>).</summary>
    public void AddAdapter(string name, LoraConfig config, bool autocastAdapterDtype = true)
    {
        if (_configs.ContainsKey(name)) throw new ArgumentException($"Adapter '{name}' already exists.");
        config = config with { FanInFanOut = config.FanInFanOut || Layers.Values.Any(l => l.FanInFanOut) };
        using var rng = Training.Rng.UseDefaultUnlessInstalled();
        foreach (var (path, l) in Layers) { var active = l.ActiveAdapter; l.AddAdapter(name, config.ForModule(path), autocastAdapterDtype); l.ActiveAdapter = active; }
        foreach (var (path, e) in _embeddings) { var active = e.ActiveAdapter; e.AddAdapter(name, config.ForModule(path), autocastAdapterDtype); e.ActiveAdapter = active; }
        _configs[name] = config;
        WrapModulesToSave(name);
        SetTrainable(ActiveAdapter);
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

    /// <summary>Makes <paramref name="name"/> the adapter used in forward and the trainable one.</summary>
    public void SetAdapter(string name)
    {
        if (!_configs.ContainsKey(name)) throw new KeyNotFoundException($"No adapter '{name}'; adapters: {string.Join(", ", _configs.Keys)}.");
        foreach (var l in Layers.Values) l.ActiveAdapter = name;
        foreach (var e in _embeddings.Values) e.ActiveAdapter = name;
        foreach (var w in _saved.Values) w.ActiveAdapter = name;
        ActiveAdapter = name;
        SetTrainable(name);
    }

    /// <summary>The module names that hold adapter parameters (PEFT's adapter_layer_names; DoRA adds the magnitude).</summary>
    private static readonly string[] AdapterParameterNames = ["lora_A", "lora_B", "lora_magnitude_vector"];

    private void SetTrainable(string adapter)
    {
        var config = _configs[adapter];
        foreach (var (name, p) in Model.named_parameters())
        {
            p.requires_grad = AdapterParameterNames.Any(n => name.Contains($".{n}.{adapter}.", StringComparison.Ordinal))
                || name.EndsWith($".lora_embedding_A.{adapter}", StringComparison.Ordinal) || name.EndsWith($".lora_embedding_B.{adapter}", StringComparison.Ordinal);
        }
        if (config.Bias == "all")
            foreach (var (name, p) in Model.named_parameters()) { if (name.EndsWith("bias", StringComparison.Ordinal)) p.requires_grad = true; }
        else if (config.Bias == "lora_only")
            foreach (var l in Layers.Values) if (l.bias is { } b) b.requires_grad = true;
        foreach (var w in _saved.Values)
        {
            foreach (var p in w.parameters()) p.requires_grad = false;
            if (w.Has(adapter)) foreach (var p in w.Copy(adapter).parameters()) p.requires_grad = true;
        }
    }

    /// <summary>Distinct parameters (tied weights counted once) with their first name.</summary>
    public static List<(string Name, Parameter P)> DistinctParameters(nn.Module model)
    {
        var seen = new HashSet<IntPtr>();
        var list = new List<(string, Parameter)>();
        foreach (var (n, p) in model.named_parameters()) if (seen.Add(p.Handle)) list.Add((n, p));
        return list;
    }

    public List<(string Name, Parameter P)> TrainableParameters() => DistinctParameters(Model).Where(p => p.P.requires_grad).ToList();

    /// <summary>(trainable, all) parameter counts as PEFT's get_nb_trainable_parameters.</summary>
    public (long Trainable, long All) CountParameters()
    {
        var ps = DistinctParameters(Model);
        // A uint8 parameter is a 4-bit weight packed two to a byte: PEFT counts Params4bit as numel * 2.
        static long Count(Parameter p) => p.dtype == ScalarType.Byte ? 2 * p.numel() : p.numel();
        return (ps.Where(p => p.P.requires_grad).Sum(p => Count(p.P)), ps.Sum(p => Count(p.P)));
    }

    /// <summary>PEFT's print_trainable_parameters line.</summary>
    public string TrainableReport()
    {
        var (t, a) = CountParameters();
        return FormatReport(t, a);
    }

    public static string FormatReport(long trainable, long all) =>
        string.Create(CultureInfo.InvariantCulture, $"trainable params: {trainable:N0} || all params: {all:N0} || trainable%: {100.0 * trainable / all:F4}");

    public void Merge()
    {
        foreach (var l in Layers.Values) l.Merge(ActiveAdapter);
        foreach (var e in _embeddings.Values) e.Merge(ActiveAdapter);
    }

    public void Unmerge()
    {
        foreach (var l in Layers.Values) l.Unmerge();
        foreach (var e in _embeddings.Values) e.Unmerge();
    }

    /// <summary>Runs the base model without adapters until the returned scope is disposed (PEFT's disable_adapter()).</summary>
    public IDisposable DisableAdapters()
    {
        foreach (var l in Layers.Values) l.AdaptersDisabled = true;
        foreach (var e in _embeddings.Values) e.AdaptersDisabled = true;
        foreach (var w in _saved.Values) w.AdaptersDisabled = true;
        return new Restore(() =>
        {
            foreach (var l in Layers.Values) l.AdaptersDisabled = false;
            foreach (var e in _embeddings.Values) e.AdaptersDisabled = false;
            foreach (var w in _saved.Values) w.AdaptersDisabled = false;
        });
    }

    /// <summary>Merges the adapter into the base weights and puts the original linears back (PEFT's merge_and_unload).</summary>
    public CausalLm MergeAndUnload()
    {
        foreach (var (path, l) in Layers)
        {
            l.Merge(ActiveAdapter);
            ModuleSurgery.Replace(Model, path, l.BaseLayer);
        }
        foreach (var (path, e) in _embeddings)
        {
            e.Merge(ActiveAdapter);
            ModuleSurgery.Replace(Model, path, e.BaseLayer);
        }
        foreach (var (path, w) in _saved)
            ModuleSurgery.Replace(Model, path, w.Has(ActiveAdapter) ? w.Copy(ActiveAdapter) : w.OriginalModule);
        return Model;
    }

    private sealed class Restore(Action a) : IDisposable { public void Dispose() => a(); }
}
