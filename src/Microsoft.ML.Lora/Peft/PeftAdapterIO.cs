using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// Reads and writes adapters in PEFT's folder format: <c>adapter_config.json</c> and <c>adapter_model.safetensors</c>
/// with keys <c>base_model.model.&lt;path&gt;.lora_A.weight</c> / <c>.lora_B.weight</c> (no adapter name, as PEFT saves).
/// </summary>
internal static class PeftAdapterIO
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    private const string Prefix = "base_model.model.";

    /// <summary>The tensors PEFT's get_peft_model_state_dict returns for the adapter, by saved key (views of the live parameters).</summary>
    public static SortedDictionary<string, Tensor> StateDict(LoraModel model, string? adapter = null)
    {
        adapter ??= model.ActiveAdapter;
        var config = model.Configs[adapter];
        var dict = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (path, l) in model.Layers)
        {
            dict[$"{Prefix}{path}.lora_A.weight"] = l.LoraA(adapter);
            dict[$"{Prefix}{path}.lora_B.weight"] = l.LoraB(adapter);
            if (l.Magnitude(adapter) is { } m) dict[$"{Prefix}{path}.lora_magnitude_vector"] = m; // PEFT drops ".weight" here
        }
        foreach (var (path, e) in model.Embeddings)
        {
            // Parameters, not modules: PEFT's keys have no ".weight".
            dict[$"{Prefix}{path}.lora_embedding_A"] = e.LoraA(adapter);
            dict[$"{Prefix}{path}.lora_embedding_B"] = e.LoraB(adapter);
        }
        foreach (var (key, weight) in EmbeddingLayers(model, config)) dict[key] = weight;
        // bias="all": every parameter with "bias" in its name. bias="lora_only" trains the adapted layers' biases but
        // saves none of them: PEFT 0.18 looks for "<layer>.bias" while the wrapped bias is "<layer>.base_layer.bias".
        if (config.Bias == "all")
            foreach (var (n, p) in LoraModel.DistinctParameters(model.Model))
                if (n.Contains("bias", StringComparison.Ordinal) && !ModulesToSaveWrapper.IsInside(n))
                    dict[Prefix + n] = p;
        // The adapter's copy is saved under the wrapped module's own path (PEFT drops "modules_to_save.<adapter>").
        foreach (var (path, w) in model.SavedModules)
            if (w.Has(adapter))
                foreach (var (n, p) in w.Copy(adapter).named_parameters())
                    dict[$"{Prefix}{path}.{n}"] = p;
        return dict;
    }

    /// <summary>adapter_config.json of <paramref name="c"/>; <paramref name="targets"/> is target_modules (a list, or one regex string).</summary>
    public static JsonObject ConfigJson(LoraConfig c, JsonNode targets) => new()
    {
        ["alpha_pattern"] = new JsonObject([.. (c.AlphaPattern ?? new Dictionary<string, double>()).Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)Number(kv.Value)))]),
        ["auto_mapping"] = null,
        ["base_model_name_or_path"] = c.BaseModelNameOrPath,
        ["bias"] = c.Bias,
        ["fan_in_fan_out"] = c.FanInFanOut,
        ["inference_mode"] = true,
        ["init_lora_weights"] = c.InitLoraWeights switch { LoraInit.Default => JsonValue.Create(true), LoraInit.Gaussian => JsonValue.Create("gaussian"), _ => JsonValue.Create(false) },
        ["layers_pattern"] = c.LayersPattern is null ? null : new JsonArray([.. c.LayersPattern.Select(p => JsonValue.Create(p))]),
        ["layers_to_transform"] = c.LayersToTransform is null ? null : new JsonArray([.. c.LayersToTransform.Select(i => JsonValue.Create(i))]),
        ["lora_alpha"] = Number(c.LoraAlpha),
        ["lora_bias"] = false,
        ["lora_dropout"] = c.LoraDropout,
        ["modules_to_save"] = c.ModulesToSave is null ? null : new JsonArray([.. c.ModulesToSave.Select(s => JsonValue.Create(s))]),
        ["peft_type"] = "LORA",
        ["r"] = c.R,
        ["rank_pattern"] = new JsonObject([.. (c.RankPattern ?? new Dictionary<string, int>()).Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value)))]),
        ["revision"] = null,
        ["target_modules"] = targets,
        ["task_type"] = "CAUSAL_LM",
        ["use_dora"] = c.UseDora,
        ["use_rslora"] = c.UseRsLora,
    };

    /// <summary>
    /// PEFT's save_embedding_layers="auto": when target_modules names embed_tokens or lm_head (the exact names, or a regex
    /// that matches such a module), the full base matrix of the adapted input embedding and of an adapted lm_head is saved
    /// too, under <c>...embed_tokens.base_layer.weight</c> / <c>...lm_head.base_layer.weight</c>.
    /// </summary>
    private static IEnumerable<(string Key, Tensor Weight)> EmbeddingLayers(LoraModel model, LoraConfig config)
    {
        string[] names = ["embed_tokens", "lm_head"];
        bool targeted = config.TargetModulesRegex is { } regex && !config.IsAllLinear
            ? model.Layers.Keys.Concat(model.Embeddings.Keys).Any(p => names.Any(n => LoraConfig.SuffixMatch(p, n)) && LoraTargets.FullMatch(regex, p))
            : (config.TargetModules ?? []).Any(t => names.Contains(t));
        if (!targeted) yield break;
        // The input embedding is the model's first embedding (embed_tokens, wte, word_embeddings); the output one is lm_head.
        var input = model.Model.named_modules().FirstOrDefault(m => m.module is LoraEmbedding || m.module is TorchSharp.Modules.Embedding).name;
        if (input is not null && model.Embeddings.TryGetValue(input, out var e)) yield return ($"{Prefix}{input}.base_layer.weight", e.weight);
        if (model.Layers.TryGetValue("lm_head", out var head)) yield return ($"{Prefix}lm_head.base_layer.weight", head.weight);
    }

    /// <summary>An integral alpha as an integer (as Python writes 16), otherwise as a double.</summary>
    private static JsonValue Number(double v) => v == Math.Floor(v) && Math.Abs(v) < 1e15 ? JsonValue.Create((long)v) : JsonValue.Create(v);

    /// <summary>
    /// target_modules as saved: the regex string, or the list entries that selected at least one adapted layer
    /// (a name that matched nothing is not written), sorted.
    /// </summary>
    public static JsonNode SavedTargets(LoraConfig c, IEnumerable<string> adaptedPaths)
    {
        if (c.TargetModulesRegex is { } regex) return JsonValue.Create(regex);
        var paths = adaptedPaths.ToList();
        var used = (c.TargetModules ?? []).Where(t => paths.Any(p => LoraConfig.SuffixMatch(p, t))).Distinct().Order(StringComparer.Ordinal);
        return new JsonArray([.. used.Select(s => JsonValue.Create(s))]);
    }

    /// <summary>Parses adapter_config.json into a <see cref="LoraConfig"/>.</summary>
    public static LoraConfig ReadConfig(string folder)
    {
        var path = Path.Combine(folder, ConfigFile);
        var j = ReadConfigJson(folder);
        if (j["peft_type"]?.GetValue<string>() is { } pt && pt != "LORA") throw new NotSupportedException($"'{path}' has peft_type '{pt}'; only LORA is supported.");
        List<string>? Strings(string k) => j[k] switch
        {
            JsonArray a => a.Select(x => x!.GetValue<string>()).ToList(),
            JsonValue v when v.TryGetValue(out string? s) => [s],
            _ => null,
        };
        LoraConfigFields.RefuseUnsupported(j, path);
        var init = j["init_lora_weights"] switch
        {
            null => LoraInit.Default,
            JsonValue v when v.TryGetValue(out bool b) => b ? LoraInit.Default : LoraInit.Random,
            JsonValue v when v.TryGetValue(out string? name) && name == "gaussian" => LoraInit.Gaussian,
            var other => throw new NotSupportedException($"'{path}': init_lora_weights {other.ToJsonString()} is not supported; supported: true, false, \"gaussian\"."),
        };
        return new LoraConfig
        {
            R = j["r"]?.GetValue<int>() ?? 8,
            LoraAlpha = j["lora_alpha"]?.GetValue<double>() ?? 8,
            LoraDropout = j["lora_dropout"]?.GetValue<double>() ?? 0,
            TargetModules = j["target_modules"] is JsonArray ? Strings("target_modules") : null,
            TargetModulesRegex = j["target_modules"] is JsonValue tv && tv.TryGetValue(out string? regex) ? regex : null,
            LayersPattern = Strings("layers_pattern"),
            RankPattern = j["rank_pattern"] is JsonObject rp ? rp.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>()) : null,
            AlphaPattern = j["alpha_pattern"] is JsonObject ap ? ap.ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<double>()) : null,
            Bias = j["bias"]?.GetValue<string>() ?? "none",
            FanInFanOut = j["fan_in_fan_out"]?.GetValue<bool>() ?? false,
            ModulesToSave = Strings("modules_to_save"),
            UseRsLora = j["use_rslora"]?.GetValue<bool>() ?? false,
            LayersToTransform = j["layers_to_transform"] switch
            {
                JsonArray a => a.Select(x => x!.GetValue<int>()).ToList(),
                JsonValue v when v.TryGetValue(out int i) => [i],
                _ => null,
            },
            InitLoraWeights = init,
            UseDora = j["use_dora"]?.GetValue<bool>() ?? false,
            BaseModelNameOrPath = j["base_model_name_or_path"]?.GetValue<string>(),
            InferenceMode = j["inference_mode"]?.GetValue<bool>() ?? true,
        };
    }

    /// <summary>Writes the adapter folder (see <see cref="WriteFolder"/>).</summary>
    public static void Save(LoraModel model, string folder, string? adapter = null)
    {
        adapter ??= model.ActiveAdapter;
        var config = model.Configs[adapter];
        WriteFolder(folder, StateDict(model, adapter), ConfigJson(config, SavedTargets(config, model.Layers.Keys.Concat(model.Embeddings.Keys))));
    }

    /// <summary>
    /// Writes <paramref name="state"/> and <paramref name="config"/> as an adapter folder of any method, as one folder
    /// swap (<see cref="AtomicFolder"/>): a kill or a failure leaves the previous adapter as it was; other files of the
    /// folder are kept.
    /// </summary>
    public static void WriteFolder(string folder, IReadOnlyDictionary<string, Tensor> state, JsonObject config)
    {
        var cpu = state.Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.detach().cpu().contiguous())).ToList();
        try
        {
            AtomicFolder.Write(folder, tmp =>
            {
                SafeTensorsWriter.Save(Path.Combine(tmp, WeightsFile), cpu, new Dictionary<string, string> { ["format"] = "pt" });
                AtomicFile.WriteAllText(Path.Combine(tmp, ConfigFile), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
                BeforeCommit?.Invoke(folder);
            }, keepOtherEntries: true);
        }
        finally
        {
            foreach (var kv in cpu) kv.Value.Dispose();
        }
    }

    /// <summary>Test hook: runs after both files are written, before they replace the previous ones.</summary>
    internal static Action<string>? BeforeCommit;

    /// <summary>
    /// Copies the weights of an adapter folder into <paramref name="adapter"/> of <paramref name="model"/>; every expected
    /// key must be present with its shape and no unknown key may remain.
    /// </summary>
    public static void LoadWeights(LoraModel model, string folder, string? adapter = null)
    {
        // Full base matrices (save_embedding_layers) are loaded into the base when present, as PEFT's non-strict load does.
        var all = StateDict(model, adapter ?? model.ActiveAdapter);
        var optional = all.Where(kv => kv.Key.EndsWith(".base_layer.weight", StringComparison.Ordinal)).ToDictionary(kv => kv.Key, kv => kv.Value);
        LoadInto(all.Where(kv => !optional.ContainsKey(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value), folder, optional);
    }

    /// <summary>
    /// Copies the tensors of an adapter folder into <paramref name="expected"/> (saved key to live tensor); every key must
    /// be present with its shape and no unknown key may remain.
    /// </summary>
    public static void LoadInto(IReadOnlyDictionary<string, Tensor> expected, string folder, IReadOnlyDictionary<string, Tensor>? optional = null)
    {
        optional ??= new Dictionary<string, Tensor>();
        var path = Path.Combine(folder, WeightsFile);
        if (!File.Exists(path)) throw new FileNotFoundException($"No {WeightsFile} in adapter folder '{folder}'.", path);
        using var file = SafeTensorsFile.Open(path);
        var missing = expected.Keys.Where(k => !file.Contains(k)).ToList();
        var unexpected = file.Tensors.Select(t => t.Name).Where(n => !expected.ContainsKey(n) && !optional.ContainsKey(n)).ToList();
        if (missing.Count > 0 || unexpected.Count > 0)
            throw new InvalidDataException($"Adapter '{path}' does not fit the model: " +
                (missing.Count > 0 ? $"missing {missing.Count} key(s) (first: {missing[0]})" : "") +
                (missing.Count > 0 && unexpected.Count > 0 ? "; " : "") +
                (unexpected.Count > 0 ? $"{unexpected.Count} unexpected key(s) (first: {unexpected[0]})" : "") + ".");
        var present = expected.Concat(optional.Where(kv => file.Contains(kv.Key))).ToList();
        foreach (var (k, target) in present)
        {
            var shape = file.Info(k).Shape;
            if (!shape.SequenceEqual(target.shape))
                throw new InvalidDataException($"Adapter '{path}': '{k}' has shape [{string.Join(", ", shape)}], the model expects [{string.Join(", ", target.shape)}] (different r or base model?).");
        }
        using (no_grad())
            foreach (var (k, target) in present)
                using (var t = file.Load(k, target.dtype, target.device)) target.copy_(t);
    }

    /// <summary>The adapter_config.json object of <paramref name="folder"/>.</summary>
    public static JsonObject ReadConfigJson(string folder)
    {
        var path = Path.Combine(folder, ConfigFile);
        if (!File.Exists(path)) throw new FileNotFoundException($"No {ConfigFile} in adapter folder '{folder}'.", path);
        try { return JsonNode.Parse(File.ReadAllText(path))!.AsObject(); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or NullReferenceException)
        { throw new InvalidDataException($"'{path}' is not valid JSON: {e.Message}", e); }
    }

    /// <summary>Applies the adapter folder's config to <paramref name="model"/> and loads its weights (PeftModel.from_pretrained).</summary>
    public static LoraModel Load(Models.CausalLm model, string folder, string adapterName = "default")
    {
        var config = ReadConfig(folder);
        var lm = LoraModel.Apply(model, config, adapterName);
        LoadWeights(lm, folder, adapterName);
        return lm;
    }
}
