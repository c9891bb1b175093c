using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// The fields of a LORA adapter_config.json that this library does not implement. Each is accepted at its neutral
/// value (what PEFT writes when the feature is off) and refused otherwise, naming the field, so an adapter that needs
/// the feature never loads silently wrong. Code that implements a field removes it from <see cref="Unsupported"/>.
/// </summary>
internal static class LoraConfigFields
{
    /// <summary>Field name → whether a value is the neutral one (the feature off).</summary>
    public static readonly Dictionary<string, Func<JsonNode?, bool>> Unsupported = new()
    {
        ["layer_replication"] = IsEmpty,
        ["megatron_config"] = IsEmpty,
        ["trainable_token_indices"] = IsEmpty,
        ["loftq_config"] = IsEmpty,
        ["eva_config"] = IsEmpty,
        ["corda_config"] = IsEmpty,
        ["alora_invocation_tokens"] = IsEmpty,
        ["use_qalora"] = IsEmpty,
        ["lora_bias"] = IsEmpty,
        ["target_parameters"] = IsEmpty,
        ["arrow_config"] = IsEmpty,
        ["ensure_weight_tying"] = IsEmpty,
    };

    /// <summary>Fields this library reads, or that carry no behaviour (bookkeeping, or settings only read with a field above).</summary>
    public static readonly HashSet<string> Known =
    [
        "peft_type", "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode",
        "r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "bias", "fan_in_fan_out", "modules_to_save", "use_rslora",
        "layers_to_transform", "layers_pattern", "rank_pattern", "alpha_pattern", "init_lora_weights", "use_dora",
        "megatron_core", "qalora_group_size",
    ];

    /// <summary>
    /// Throws <see cref="NotSupportedException"/> naming the first field of <paramref name="json"/> (read from
    /// <paramref name="path"/>) that asks for something not implemented: an unsupported field away from its neutral value,
    /// a task_type other than CAUSAL_LM, or an unknown field with a value other than null, false, 0 or empty.
    /// </summary>
    public static void RefuseUnsupported(JsonObject json, string path)
    {
        foreach (var (name, value) in json)
        {
            if (Unsupported.TryGetValue(name, out var neutral))
            {
                if (!neutral(value))
                    throw new NotSupportedException($"'{path}': {name} = {value!.ToJsonString()} is not supported by this library (only its default, off, is); the adapter cannot be loaded as trained.");
            }
            else if (name == "task_type")
            {
                if (value is JsonValue v && v.TryGetValue(out string? task) && task != "CAUSAL_LM")
                    throw new NotSupportedException($"'{path}': task_type '{task}' is not supported; only CAUSAL_LM adapters load on a causal LM.");
            }
            else if (!Known.Contains(name) && !IsEmpty(value))
                throw new NotSupportedException($"'{path}': unknown field {name} = {value!.ToJsonString()}; this library implements PEFT 0.18's LoraConfig and cannot tell what it changes.");
        }
    }

    /// <summary>null, false, 0, "" or an empty list or object: what PEFT writes for a feature that is off.</summary>
    private static bool IsEmpty(JsonNode? value) => value switch
    {
        null => true,
        JsonArray a => a.Count == 0,
        JsonObject o => o.Count == 0,
        JsonValue v when v.TryGetValue(out bool b) => !b,
        JsonValue v when v.TryGetValue(out double d) => d == 0,
        JsonValue v when v.TryGetValue(out string? s) => s.Length == 0,
        _ => false,
    };
}
