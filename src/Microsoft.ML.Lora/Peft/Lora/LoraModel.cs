using System.Globalization;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Embedding = Microsoft.ML.Lora.Models.Layers.Embedding;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// The LoRA tuner (PEFT's tuners/lora/model.py LoraModel): the first adapter wraps its targets in
/// <see cref="LoraLinear"/> in place; later adapters are added to the same layers. <see cref="PeftModel"/> holds it.
/// </summary>
internal sealed class LoraModel(CausalLm model) : LayerTuner<LoraConfig>(model)
{
    /// <summary>Wrapped linear layers by module path (the path of the original linear).</summary>
    public IReadOnlyDictionary<string, LoraLinear> Layers => LayersOf<LoraLinear>();
    /// <summary>Wrapped embeddings by module path (PEFT's LoRA Embedding layer).</summary>
    public IReadOnlyDictionary<string, LoraEmbedding> Embeddings => LayersOf<LoraEmbedding>();

    /// <summary>
    /// Names of the linear layers of <paramref name="model"/> (what target_modules can match): a linear an adapter
    /// wrapped already counts at its own path, never its base_layer or the adapters' own linears.
    /// </summary>
    public static List<(string Path, ILinear Linear)> LinearModules(nn.Module model) =>
        model.named_modules().Where(m => m.module is ILinear && m.name.Length > 0 && !m.name.Contains("base_layer", StringComparison.Ordinal)
                && !m.name.Contains("lora_", StringComparison.Ordinal))
            .Select(m => (m.name, (ILinear)m.module)).ToList();

    /// <summary>The paths <paramref name="config"/> selects on a model with these linear paths.</summary>
    public static List<string> SelectTargets(IEnumerable<string> linearPaths, LoraConfig config, string modelType)
    {
        var paths = linearPaths.ToList();
        return Select(paths, paths, config, modelType).Targets;
    }

    /// <summary>
    /// PEFT's target selection over the module paths of a model: the default targets of the model type when none are
    /// given, "all-linear" resolved to the linear paths (lm_head excepted), then <see cref="LoraTargets.IsTarget"/>
    /// (exclude_modules and modules_to_save first). When nothing is selected, PEFT's checks of inject_adapter tell
    /// excluded from unmatched modules; when exclude_modules excluded nothing, PEFT's warning goes to <paramref name="warning"/>.
    /// Returns the config as it is saved (targets resolved) and the selected paths.
    /// </summary>
    public static (LoraConfig Config, List<string> Targets) Select(IReadOnlyList<string> modulePaths, IReadOnlyList<string> linearPaths, LoraConfig config, string modelType,
        Action<string>? warning = null)
    {
        config.Validate();
        if (config.TargetModules is null && config.TargetModulesRegex is null) config = config with { TargetModules = LoraConfig.DefaultTargets(modelType) };
        config = LoraTargets.ResolveAllLinear(config, linearPaths);
        var c = config;
        var selected = ExcludedModules.Select(modulePaths.Where(p => p.Length > 0), p => LoraTargets.IsExcluded(c, p), p => LoraTargets.IsSelected(c, p),
            c.ExcludeModules, c.ExcludeModulesRegex, () => NotFoundMessage(c, linearPaths, modelType), warning, c.LayersToTransform, c.LayersPattern);
        return (config, selected);
    }

    /// <summary>The error when target_modules matches no module of the model (nothing excluded), listing its linear modules.</summary>
    private static string NotFoundMessage(LoraConfig config, IReadOnlyList<string> linearPaths, string modelType)
    {
        var names = linearPaths.Select(p => System.Text.RegularExpressions.Regex.Replace(p, @"\.\d+\.", ".N.")).Distinct();
        var targets = config.TargetModulesRegex is { } regex ? $"'{regex}' (a regular expression matched against the whole path)" : $"[{string.Join(", ", config.TargetModules!)}]";
        return $"Target modules {targets} not found in the {modelType} model" +
            (config.LayersToTransform is null ? "" : $" (layers_to_transform [{string.Join(", ", config.LayersToTransform)}]" +
                (config.LayersPattern is null ? ")" : $", layers_pattern [{string.Join(", ", config.LayersPattern)}])")) +
            $". Its linear modules are: {string.Join(", ", names)}.";
    }

    /// <summary>Module paths of <paramref name="model"/> that target_modules can match (none inside an adapter wrapper).</summary>
    internal static List<(string Path, nn.Module Module)> CandidateModules(nn.Module model) =>
        model.named_modules().Where(m => m.name.Length > 0 && !m.name.Contains("base_layer", StringComparison.Ordinal)
                && !m.name.Contains("lora_", StringComparison.Ordinal) && !ModulesToSaveWrapper.IsInside(m.name))
            .Select(m => (m.name, m.module)).ToList();

    /// <summary>
    /// Adds adapter <paramref name="adapterName"/> to the targets of its config (PEFT's inject_adapter): linears are
    /// wrapped in <see cref="LoraLinear"/>, embeddings in <see cref="LoraEmbedding"/>, or added to when an earlier
    /// adapter wrapped them. With autocast (PEFT's default) the adapter weights of a bfloat16 or float16 model are
    /// float32, so the optimizer updates full-precision weights while the base stays in half precision.
    /// </summary>
    protected override LoraConfig Inject(string adapterName, LoraConfig config, bool autocastAdapterDtype, Action<string> warning)
    {
        var model = Model;
        var modules = CandidateModules(model);
        var linears = LinearModules(model);
        RefuseTiedHead(model, config with { TargetModules = config.TargetModules ?? (config.TargetModulesRegex is null ? LoraConfig.DefaultTargets(model.Config.ModelType) : null) }, modules);
        (config, var targets) = Select([.. modules.Select(m => m.Path)], [.. linears.Select(l => l.Path)], config, model.Config.ModelType, warning);
        var byPath = modules.ToDictionary(m => m.Path, m => m.Module);
        foreach (var t in targets)
            if (byPath[t] is not (ILinear or Embedding or LoraEmbedding))
                throw new NotSupportedException($"Target module '{t}' is a {byPath[t].GetName()}; LoRA adapts linear layers (Linear, Conv1D) and embeddings, as PEFT. " +
                    "Name the layers inside it instead (set TargetModules).");
        if (!config.FanInFanOut && targets.Any(t => byPath[t] is ILinear { FanInFanOut: true }))
        {
            warning("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
            config = config with { FanInFanOut = true };
        }
        // In module order, as PEFT's inject_adapter: the seeded initialisation then draws the same values for a layer
        // whether or not an earlier adapter wrapped it.
        foreach (var path in targets)
        {
            var target = config.ForModule(path);
            if (TryGetLayer<LoraEmbedding>(path, out var embedding)) embedding.AddAdapter(adapterName, target, autocastAdapterDtype);
            else if (TryGetLayer<LoraLinear>(path, out var linear)) linear.AddAdapter(adapterName, target, autocastAdapterDtype);
            else if (byPath[path] is Embedding e)
            {
                var wrapper = new LoraEmbedding(e, EmbeddingPaddingIdx(model.Config));
                try { Wrap(path, wrapper); }
                catch (InvalidOperationException ex)
                { throw new NotSupportedException($"Target module '{path}': LoRA on the embedding of a {model.Config.ModelType} model is not supported ({ex.Message})", ex); }
                wrapper.AddAdapter(adapterName, target, autocastAdapterDtype);
            }
            else
            {
                var wrapper = new LoraLinear((nn.Module<Tensor, Tensor>)ModuleSurgery.Get(model, path));
                Wrap(path, wrapper);
                wrapper.AddAdapter(adapterName, target, autocastAdapterDtype);
            }
        }
        return config;
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

    /// <summary>A and B of the adapter (and DoRA's magnitude), and the biases its bias mode trains (PEFT's _mark_only_adapters_as_trainable).</summary>
    public override IEnumerable<Parameter> TrainableParameters(string adapter)
    {
        var config = Configs[adapter];
        var layers = LayersHolding<LoraLinear>(adapter).Select(l => l.Layer).ToList();
        foreach (var l in layers)
        {
            yield return l.LoraA(adapter);
            yield return l.LoraB(adapter);
            if (l.Magnitude(adapter) is { } m) yield return m; // DoRA
        }
        foreach (var (_, e) in LayersHolding<LoraEmbedding>(adapter))
        {
            yield return e.LoraA(adapter);
            yield return e.LoraB(adapter);
        }
        if (config.Bias == "all")
        {
            foreach (var (name, p) in Model.named_parameters())
                if (name.EndsWith("bias", StringComparison.Ordinal) && !ModulesToSaveWrapper.IsInside(name)) yield return p;
        }
        else if (config.Bias == "lora_only")
            foreach (var l in layers) if (l.bias is { } b) yield return b;
    }

    /// <inheritdoc/>
    public override SortedDictionary<string, Tensor> StateDict(string adapter)
    {
        const string Prefix = PeftAdapterIO.Prefix;
        var config = Configs[adapter];
        var dict = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (path, l) in LayersHolding<LoraLinear>(adapter))
        {
            dict[$"{Prefix}{path}.lora_A.weight"] = l.LoraA(adapter);
            dict[$"{Prefix}{path}.lora_B.weight"] = l.LoraB(adapter);
            if (l.Magnitude(adapter) is { } m) dict[$"{Prefix}{path}.lora_magnitude_vector"] = m; // PEFT drops ".weight" here
        }
        foreach (var (path, e) in LayersHolding<LoraEmbedding>(adapter))
        {
            // Parameters, not modules: PEFT's keys have no ".weight".
            dict[$"{Prefix}{path}.lora_embedding_A"] = e.LoraA(adapter);
            dict[$"{Prefix}{path}.lora_embedding_B"] = e.LoraB(adapter);
        }
        foreach (var (key, weight) in EmbeddingLayers(config)) dict[key] = weight;
        // bias="all": every parameter with "bias" in its name. bias="lora_only" trains the adapted layers' biases but
        // saves none of them: PEFT 0.18 looks for "<layer>.bias" while the wrapped bias is "<layer>.base_layer.bias".
        if (config.Bias == "all")
            foreach (var (n, p) in PeftModel.DistinctParameters(Model))
                if (n.Contains("bias", StringComparison.Ordinal) && !ModulesToSaveWrapper.IsInside(n))
                    dict[Prefix + n] = p;
        return dict;
    }

    /// <inheritdoc/>
    public override System.Text.Json.Nodes.JsonObject ConfigJson(string adapter)
    {
        var config = Configs[adapter];
        // Names that selected an excluded module are kept, as PEFT keeps them: the file then reloads onto the same layers
        // with exclude_modules in use (no "no modules were excluded" warning).
        var excluded = CandidateModules(Model).Select(m => m.Path).Where(p => ExcludedModules.IsExcluded(config.ExcludeModules, config.ExcludeModulesRegex, p));
        return LoraConfigJson.Write(config, LoraConfigJson.SavedTargets(config, LayersHolding<ITunerLayer>(adapter).Select(l => l.Path).Concat(excluded)));
    }

    /// <summary>
    /// PEFT's save_embedding_layers="auto": when target_modules names embed_tokens or lm_head (the exact names, or a regex
    /// that matches such a module), the full base matrix of the adapted input embedding and of an adapted lm_head is saved
    /// too, under <c>...embed_tokens.base_layer.weight</c> / <c>...lm_head.base_layer.weight</c>.
    /// </summary>
    private IEnumerable<(string Key, Tensor Weight)> EmbeddingLayers(LoraConfig config)
    {
        const string Prefix = PeftAdapterIO.Prefix;
        string[] names = ["embed_tokens", "lm_head"];
        bool targeted = config.TargetModulesRegex is { } regex && !config.IsAllLinear
            ? AllLayers.Keys.Any(p => names.Any(n => LoraConfig.SuffixMatch(p, n)) && LoraTargets.FullMatch(regex, p))
            : (config.TargetModules ?? []).Any(t => names.Contains(t));
        if (!targeted) yield break;
        // The input embedding is the model's first embedding (embed_tokens, wte, word_embeddings); the output one is lm_head.
        var input = Model.named_modules().FirstOrDefault(m => m.module is LoraEmbedding || m.module is Embedding).name;
        if (input is not null && AllLayers.GetValueOrDefault(input) is LoraEmbedding e) yield return ($"{Prefix}{input}.base_layer.weight", e.weight);
        if (AllLayers.GetValueOrDefault("lm_head") is LoraLinear head) yield return ($"{Prefix}lm_head.base_layer.weight", head.weight);
    }
}
