using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora.Peft;

/// <summary>LoRA's fields of adapter_config.json (PEFT's LoraConfig); the fields every method has are read and written by <see cref="PeftAdapterIO"/>.</summary>
internal static class LoraConfigJson
{
    /// <summary>LoRA's own fields of <paramref name="c"/>, with <paramref name="targets"/> as target_modules.</summary>
    public static JsonObject Write(LoraConfig c, IEnumerable<string> targets) => new()
    {
        ["alpha_pattern"] = new JsonObject(),
        ["bias"] = c.Bias,
        ["fan_in_fan_out"] = c.FanInFanOut,
        ["init_lora_weights"] = c.InitLoraWeights switch { LoraInit.Default => JsonValue.Create(true), LoraInit.Gaussian => JsonValue.Create("gaussian"), _ => JsonValue.Create(false) },
        ["layers_pattern"] = null,
        ["layers_to_transform"] = c.LayersToTransform is null ? null : new JsonArray([.. c.LayersToTransform.Select(i => JsonValue.Create(i))]),
        ["lora_alpha"] = c.LoraAlpha == Math.Floor(c.LoraAlpha) ? JsonValue.Create((long)c.LoraAlpha) : JsonValue.Create(c.LoraAlpha),
        ["lora_bias"] = false,
        ["lora_dropout"] = c.LoraDropout,
        ["r"] = c.R,
        ["rank_pattern"] = new JsonObject(),
        ["target_modules"] = new JsonArray([.. targets.Distinct().Order(StringComparer.Ordinal).Select(s => JsonValue.Create(s))]),
        ["use_dora"] = c.UseDora,
        ["use_rslora"] = c.UseRsLora,
    };

    /// <summary>Reads LoRA's fields of adapter_config.json (<paramref name="path"/> is named in errors).</summary>
    public static PeftConfig Read(JsonObject j, string path)
    {
        var init = j["init_lora_weights"] is JsonValue iv
            ? iv.TryGetValue(out bool b) ? (b ? LoraInit.Default : LoraInit.Random) : iv.TryGetValue(out string? name) && name == "gaussian" ? LoraInit.Gaussian : LoraInit.Default
            : LoraInit.Default;
        return new LoraConfig
        {
            R = PeftJson.Int(j, "r", path) ?? 8,
            LoraAlpha = PeftJson.Double(j, "lora_alpha", path) ?? 8,
            LoraDropout = PeftJson.Double(j, "lora_dropout", path) ?? 0,
            TargetModules = PeftJson.Strings(j, "target_modules", path),
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
}
