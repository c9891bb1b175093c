using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora.Peft;

/// <summary>LoRA's fields of adapter_config.json (PEFT's LoraConfig); the fields every method has are read and written by <see cref="PeftAdapterIO"/>.</summary>
internal static class LoraConfigJson
{
    /// <summary>LoRA's own fields of <paramref name="c"/>; <paramref name="targets"/> is target_modules (a list, or one regex string; see <see cref="SavedTargets"/>).</summary>
    public static JsonObject Write(LoraConfig c, JsonNode targets) => new()
    {
        ["alpha_pattern"] = new JsonObject([.. (c.AlphaPattern ?? new Dictionary<string, double>()).Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)Number(kv.Value)))]),
        ["bias"] = c.Bias,
        ["exclude_modules"] = ExcludedModules.Json(c.ExcludeModules, c.ExcludeModulesRegex),
        ["fan_in_fan_out"] = c.FanInFanOut,
        ["init_lora_weights"] = c.InitLoraWeights switch { LoraInit.Default => JsonValue.Create(true), LoraInit.Gaussian => JsonValue.Create("gaussian"), _ => JsonValue.Create(false) },
        ["layers_pattern"] = c.LayersPattern is null ? null : new JsonArray([.. c.LayersPattern.Select(p => JsonValue.Create(p))]),
        ["layers_to_transform"] = c.LayersToTransform is null ? null : new JsonArray([.. c.LayersToTransform.Select(i => JsonValue.Create(i))]),
        ["lora_alpha"] = Number(c.LoraAlpha),
        ["lora_bias"] = false,
        ["lora_dropout"] = c.LoraDropout,
        ["r"] = c.R,
        ["rank_pattern"] = new JsonObject([.. (c.RankPattern ?? new Dictionary<string, int>()).Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)JsonValue.Create(kv.Value)))]),
        ["target_modules"] = targets,
        ["use_dora"] = c.UseDora,
        ["use_rslora"] = c.UseRsLora,
    };

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

    /// <summary>Reads LoRA's fields of adapter_config.json (<paramref name="path"/> is named in errors).</summary>
    public static PeftConfig Read(JsonObject j, string path)
    {
        LoraConfigFields.RefuseUnsupported(j, path);
        var init = j["init_lora_weights"] switch
        {
            null => LoraInit.Default,
            JsonValue v when v.TryGetValue(out bool b) => b ? LoraInit.Default : LoraInit.Random,
            JsonValue v when v.TryGetValue(out string? name) && name == "gaussian" => LoraInit.Gaussian,
            var other => throw new NotSupportedException($"'{path}': init_lora_weights {other.ToJsonString()} is not supported; supported: true, false, \"gaussian\"."),
        };
        var (exclude, excludeRegex) = ExcludedModules.Read(j, path);
        return new LoraConfig
        {
            R = PeftJson.Int(j, "r", path) ?? 8,
            LoraAlpha = PeftJson.Double(j, "lora_alpha", path) ?? 8,
            LoraDropout = PeftJson.Double(j, "lora_dropout", path) ?? 0,
            // target_modules is a list of names, or one string: a regex matched against the whole path (or "all-linear").
            TargetModules = j["target_modules"] is JsonValue ? null : PeftJson.Strings(j, "target_modules", path),
            TargetModulesRegex = j["target_modules"] is JsonValue ? PeftJson.String(j, "target_modules", path) : null,
            // exclude_modules likewise: a list of names, or one string matched against the whole path.
            ExcludeModules = exclude,
            ExcludeModulesRegex = excludeRegex,
            LayersPattern = PeftJson.Strings(j, "layers_pattern", path),
            RankPattern = Pattern(j, "rank_pattern", path, v => v.GetValue<int>(), "integers"),
            AlphaPattern = Pattern(j, "alpha_pattern", path, v => v.GetValue<double>(), "numbers"),
            Bias = PeftJson.String(j, "bias", path) ?? "none",
            FanInFanOut = PeftJson.Bool(j, "fan_in_fan_out", path) ?? false,
            UseRsLora = PeftJson.Bool(j, "use_rslora", path) ?? false,
            LayersToTransform = j["layers_to_transform"] switch
            {
                JsonArray a => a.Select(x => x is JsonValue v && v.TryGetValue(out int i) ? i : throw new PeftConfigException($"'{path}': field 'layers_to_transform' holds {x?.ToJsonString() ?? "null"}; expected integers.", path, "layers_to_transform")).ToList(),
                JsonValue v when v.TryGetValue(out int i) => [i],
                null => null,
                var other => throw new PeftConfigException($"'{path}': field 'layers_to_transform' is {other.ToJsonString()}; expected an integer or a list of integers.", path, "layers_to_transform"),
            },
            InitLoraWeights = init,
            UseDora = PeftJson.Bool(j, "use_dora", path) ?? false,
        };
    }

    /// <summary>rank_pattern / alpha_pattern: an object of module pattern to value; a value of another type names the field and key.</summary>
    private static Dictionary<string, T>? Pattern<T>(JsonObject j, string field, string path, Func<JsonNode, T> read, string expected) => j[field] switch
    {
        null => null,
        JsonObject o => o.ToDictionary(kv => kv.Key, kv =>
        {
            try { return read(kv.Value ?? throw new InvalidOperationException()); }
            catch (Exception e) when (e is InvalidOperationException or FormatException)
            { throw new PeftConfigException($"'{path}': field '{field}' key '{kv.Key}' holds {kv.Value?.ToJsonString() ?? "null"}; expected {expected}.", path, field, e); }
        }),
        var other => throw new PeftConfigException($"'{path}': field '{field}' is {other.ToJsonString()}; expected an object.", path, field),
    };
}
