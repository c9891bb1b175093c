using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// Reads and writes adapters of any method in PEFT's folder format: <c>adapter_config.json</c> (with its
/// <c>peft_type</c>, dispatched by <see cref="PeftMethods"/>) and <c>adapter_model.safetensors</c> with the keys of the
/// method's state dict (<c>base_model.model.&lt;path&gt;.lora_A.weight</c>: no adapter name, as PEFT saves).
/// </summary>
internal static class PeftAdapterIO
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    /// <summary>The prefix of every saved key (PEFT's PeftModel.base_model.model).</summary>
    public const string Prefix = "base_model.model.";

    /// <summary>
    /// adapter_config.json of adapter <paramref name="adapter"/>: the fields of every method (PEFT's PeftConfig) and
    /// the method's own, keys sorted as PEFT writes them.
    /// </summary>
    public static JsonObject ConfigJson(PeftModel model, string adapter)
    {
        var c = model.PeftConfigs[adapter];
        var j = model.Tuner.ConfigJson(adapter);
        j["auto_mapping"] = null;
        j["base_model_name_or_path"] = c.BaseModelNameOrPath;
        j["inference_mode"] = true;
        j["modules_to_save"] = c.ModulesToSave is null ? null : new JsonArray([.. c.ModulesToSave.Select(s => JsonValue.Create(s))]);
        j["peft_type"] = c.PeftType;
        j["revision"] = c.Revision;
        j["task_type"] = c.TaskType;
        var sorted = new JsonObject();
        foreach (var key in j.Select(kv => kv.Key).Order(StringComparer.Ordinal).ToList())
        {
            var value = j[key];
            j.Remove(key);
            sorted[key] = value;
        }
        return sorted;
    }

    /// <summary>The adapter_config.json object of <paramref name="folder"/>.</summary>
    public static JsonObject ReadConfigJson(string folder)
    {
        var path = Path.Combine(folder, ConfigFile);
        if (!File.Exists(path)) throw new PeftConfigException($"No {ConfigFile} in adapter folder '{folder}'.", path);
        try { return JsonNode.Parse(File.ReadAllText(path))!.AsObject(); }
        catch (Exception e) when (e is JsonException or InvalidOperationException or NullReferenceException)
        { throw new PeftConfigException($"'{path}' is not a JSON object: {e.Message}", path, null, e); }
    }

    /// <summary>Parses adapter_config.json into the config of its method (by peft_type; LORA when absent).</summary>
    public static PeftConfig ReadConfig(string folder)
    {
        var path = Path.Combine(folder, ConfigFile);
        var j = ReadConfigJson(folder);
        var method = PeftMethods.Get(PeftJson.String(j, "peft_type", path) ?? "LORA", path);
        return method.ReadConfig(j, path) with
        {
            TaskType = PeftJson.String(j, "task_type", path) ?? "CAUSAL_LM",
            BaseModelNameOrPath = PeftJson.String(j, "base_model_name_or_path", path),
            Revision = PeftJson.String(j, "revision", path),
            InferenceMode = PeftJson.Bool(j, "inference_mode", path) ?? true,
            ModulesToSave = PeftJson.Strings(j, "modules_to_save", path),
        };
    }

    /// <summary>Writes the adapter folder (see <see cref="WriteFolder"/>).</summary>
    public static void Save(PeftModel model, string folder, string? adapter = null)
    {
        adapter ??= model.ActiveAdapter;
        using var scope = NewDisposeScope(); // a prompt encoder's output is computed for the file
        WriteFolder(folder, model.StateDict(adapter), ConfigJson(model, adapter));
    }

    /// <summary>
    /// Writes <paramref name="state"/> and <paramref name="config"/> as an adapter folder of any method, as one folder
    /// swap (<see cref="AtomicFolder"/>): a kill or a failure leaves the previous adapter as it was; other files of the
    /// folder are kept.
    /// </summary>
    public static void WriteFolder(string folder, IReadOnlyDictionary<string, Tensor> state, JsonObject config) =>
        AtomicFolder.Write(folder, tmp =>
        {
            WriteTensors(Path.Combine(tmp, WeightsFile), state);
            AtomicFile.WriteAllText(Path.Combine(tmp, ConfigFile), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            BeforeCommit?.Invoke(folder);
        }, keepOtherEntries: true);

    /// <summary>Writes <paramref name="state"/> as a safetensors file ("format": "pt", as PEFT), copied to the CPU; call it inside a folder written atomically.</summary>
    public static void WriteTensors(string path, IReadOnlyDictionary<string, Tensor> state)
    {
        var cpu = state.Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value.detach().cpu().contiguous())).ToList();
        try { SafeTensorsWriter.Save(path, cpu, new Dictionary<string, string> { ["format"] = "pt" }); }
        finally { foreach (var kv in cpu) kv.Value.Dispose(); }
    }

    /// <summary>Test hook: runs after both files are written, before they replace the previous ones.</summary>
    internal static Action<string>? BeforeCommit;

    /// <summary>
    /// Copies the weights of an adapter folder into <paramref name="adapter"/> of <paramref name="model"/>; every expected
    /// key must be present with its shape and no unknown key may remain.
    /// </summary>
    public static void LoadWeights(PeftModel model, string folder, string? adapter = null)
    {
        // Full base matrices (save_embedding_layers) are loaded into the base when present, as PEFT's non-strict load does.
        var all = model.StateDict(adapter ?? model.ActiveAdapter);
        var optional = all.Where(kv => kv.Key.EndsWith(".base_layer.weight", StringComparison.Ordinal)).ToDictionary(kv => kv.Key, kv => kv.Value);
        LoadInto(all.Where(kv => !optional.ContainsKey(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value), folder, optional);
    }

    /// <summary>
    /// Copies the tensors of an adapter folder (its <paramref name="fileName"/>) into <paramref name="expected"/> (saved key
    /// to live tensor); every key must be present with its shape and no unknown key may remain.
    /// </summary>
    public static void LoadInto(IReadOnlyDictionary<string, Tensor> expected, string folder, IReadOnlyDictionary<string, Tensor>? optional = null,
        string fileName = WeightsFile)
    {
        optional ??= new Dictionary<string, Tensor>();
        var path = Path.Combine(folder, fileName);
        if (!File.Exists(path)) throw new AdapterLoadException($"No {fileName} in adapter folder '{folder}'.", path);
        using var file = OpenWeights(path);
        var missing = expected.Keys.Where(k => !file.Contains(k)).ToList();
        var unexpected = file.Tensors.Select(t => t.Name).Where(n => !expected.ContainsKey(n) && !optional.ContainsKey(n)).ToList();
        if (missing.Count > 0 || unexpected.Count > 0)
            throw new AdapterLoadException($"Adapter '{path}' does not fit the model: " +
                (missing.Count > 0 ? $"missing {missing.Count} key(s) (first: {missing[0]})" : "") +
                (missing.Count > 0 && unexpected.Count > 0 ? "; " : "") +
                (unexpected.Count > 0 ? $"{unexpected.Count} unexpected key(s) (first: {unexpected[0]})" : "") + ".",
                path, missing.Count > 0 ? missing[0] : unexpected[0]);
        var present = expected.Concat(optional.Where(kv => file.Contains(kv.Key))).ToList();
        foreach (var (k, target) in present)
        {
            var shape = file.Info(k).Shape;
            if (!shape.SequenceEqual(target.shape))
                throw new AdapterLoadException($"Adapter '{path}': '{k}' has shape [{string.Join(", ", shape)}], the model expects [{string.Join(", ", target.shape)}] (different r or base model?).", path, k);
        }
        using (no_grad())
            foreach (var (k, target) in present)
                using (var t = file.Load(k, target.dtype, target.device)) target.copy_(t);
    }

    /// <summary>Opens adapter_model.safetensors; a malformed file is an <see cref="AdapterLoadException"/> naming it.</summary>
    private static SafeTensorsFile OpenWeights(string path)
    {
        try { return SafeTensorsFile.Open(path); }
        catch (Exception e) when (e is InvalidDataException or IOException and not FileNotFoundException)
        { throw new AdapterLoadException($"'{path}' is not a readable safetensors file: {e.Message}", path, null, e); }
    }

    /// <summary>Applies the adapter folder's config to <paramref name="model"/> and loads its weights, trainable (PeftModel.from_pretrained with is_trainable).</summary>
    public static PeftModel Load(Models.CausalLm model, string folder, string adapterName = "default") =>
        PeftModel.FromPretrained(model, folder, adapterName, isTrainable: true);
}
