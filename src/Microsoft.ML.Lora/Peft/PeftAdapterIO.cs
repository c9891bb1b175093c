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
            if (config.Bias == "lora_only" && l.bias is { } b) dict[$"{Prefix}{path}.base_layer.bias"] = b;
        }
        if (config.Bias == "all")
            foreach (var (n, p) in LoraModel.DistinctParameters(model.Model))
                if (n.EndsWith("bias", StringComparison.Ordinal) && !ModulesToSaveWrapper.IsInside(n))
                    dict[Prefix + n] = p;
        // The adapter's copy is saved under the wrapped module's own path (PEFT drops "modules_to_save.<adapter>").
        foreach (var (path, w) in model.SavedModules)
            if (w.Has(adapter))
                foreach (var (n, p) in w.Copy(adapter).named_parameters())
                    dict[$"{Prefix}{path}.{n}"] = p;
        return dict;
    }

    public static JsonObject ConfigJson(LoraConfig c, IEnumerable<string> targets) => new()
    {
        ["alpha_pattern"] = new JsonObject(),
        ["auto_mapping"] = null,
        ["base_model_name_or_path"] = c.BaseModelNameOrPath,
        ["bias"] = c.Bias,
        ["fan_in_fan_out"] = c.FanInFanOut,
        ["inference_mode"] = true,
        ["init_lora_weights"] = c.InitLoraWeights switch { LoraInit.Default => JsonValue.Create(true), LoraInit.Gaussian => JsonValue.Create("gaussian"), _ => JsonValue.Create(false) },
        ["layers_pattern"] = null,
        ["layers_to_transform"] = c.LayersToTransform is null ? null : new JsonArray([.. c.LayersToTransform.Select(i => JsonValue.Create(i))]),
        ["lora_alpha"] = c.LoraAlpha == Math.Floor(c.LoraAlpha) ? JsonValue.Create((long)c.LoraAlpha) : JsonValue.Create(c.LoraAlpha),
        ["lora_bias"] = false,
        ["lora_dropout"] = c.LoraDropout,
        ["modules_to_save"] = c.ModulesToSave is null ? null : new JsonArray([.. c.ModulesToSave.Select(s => JsonValue.Create(s))]),
        ["peft_type"] = "LORA",
        ["r"] = c.R,
        ["rank_pattern"] = new JsonObject(),
        ["revision"] = null,
        ["target_modules"] = new JsonArray([.. targets.Distinct().Order(StringComparer.Ordinal).Select(s => JsonValue.Create(s))]),
        ["task_type"] = "CAUSAL_LM",
        ["use_dora"] = c.UseDora,
        ["use_rslora"] = c.UseRsLora,
    };

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
        var init = j["init_lora_weights"] is JsonValue iv
            ? iv.TryGetValue(out bool b) ? (b ? LoraInit.Default : LoraInit.Random) : iv.GetValue<string>() == "gaussian" ? LoraInit.Gaussian : LoraInit.Default
            : LoraInit.Default;
        return new LoraConfig
        {
            R = j["r"]?.GetValue<int>() ?? 8,
            LoraAlpha = j["lora_alpha"]?.GetValue<double>() ?? 8,
            LoraDropout = j["lora_dropout"]?.GetValue<double>() ?? 0,
            TargetModules = Strings("target_modules"),
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
        var targets = config.TargetModules is { } t ? t : model.Layers.Keys.Select(p => p.Split('.')[^1]).ToList();
        WriteFolder(folder, StateDict(model, adapter), ConfigJson(config, targets));
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
    public static void LoadWeights(LoraModel model, string folder, string? adapter = null) =>
        LoadInto(StateDict(model, adapter ?? model.ActiveAdapter), folder);

    /// <summary>
    /// Copies the tensors of an adapter folder into <paramref name="expected"/> (saved key to live tensor); every key must
    /// be present with its shape and no unknown key may remain.
    /// </summary>
    public static void LoadInto(IReadOnlyDictionary<string, Tensor> expected, string folder)
    {
        var path = Path.Combine(folder, WeightsFile);
        if (!File.Exists(path)) throw new FileNotFoundException($"No {WeightsFile} in adapter folder '{folder}'.", path);
        using var file = SafeTensorsFile.Open(path);
        var missing = expected.Keys.Where(k => !file.Contains(k)).ToList();
        var unexpected = file.Tensors.Select(t => t.Name).Where(n => !expected.ContainsKey(n)).ToList();
        if (missing.Count > 0 || unexpected.Count > 0)
            throw new InvalidDataException($"Adapter '{path}' does not fit the model: " +
                (missing.Count > 0 ? $"missing {missing.Count} key(s) (first: {missing[0]})" : "") +
                (missing.Count > 0 && unexpected.Count > 0 ? "; " : "") +
                (unexpected.Count > 0 ? $"{unexpected.Count} unexpected key(s) (first: {unexpected[0]})" : "") + ".");
        foreach (var (k, target) in expected)
        {
            var shape = file.Info(k).Shape;
            if (!shape.SequenceEqual(target.shape))
                throw new InvalidDataException($"Adapter '{path}': '{k}' has shape [{string.Join(", ", shape)}], the model expects [{string.Join(", ", target.shape)}] (different r or base model?).");
        }
        using (no_grad())
            foreach (var (k, target) in expected)
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
