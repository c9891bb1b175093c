using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// Typed reads of a config.json for the family descriptions: a required field names the file, the model type and
/// every accepted key when it is absent; an optional one distinguishes absent (the transformers default) from an
/// explicit null (which transformers keeps as None).
/// </summary>
internal sealed class ConfigReader(JsonObject json, string source, string modelType)
{
    /// <summary>The parsed config.json.</summary>
    public JsonObject Json { get; } = json;

    /// <summary>The file (or description) the config came from, for error messages.</summary>
    public string Source { get; } = source;

    /// <summary>The config's <c>model_type</c>.</summary>
    public string ModelType { get; } = modelType;

    /// <summary>The first of <paramref name="names"/> present as an integer; throws naming all of them when none is.</summary>
    public int Int(params string[] names)
    {
        foreach (var n in names) if (Json[n] is JsonValue v && v.TryGetValue(out int i)) return i;
        throw Error($"has no {string.Join(" / ", names)}");
    }

    /// <summary>An integer (the first element of a list, as for eos_token_id), or null when absent or null.</summary>
    public int? OptInt(string name) => Json[name] switch
    {
        JsonValue v when v.TryGetValue(out int i) => i,
        JsonArray { Count: > 0 } a when a[0] is JsonValue v0 && v0.TryGetValue(out int i0) => i0,
        _ => null,
    };

    /// <summary>The integer <paramref name="name"/>: <paramref name="whenAbsent"/> when the key is missing, null when it is null.</summary>
    public int? OptInt(string name, int? whenAbsent) => Json.ContainsKey(name) ? OptInt(name) : whenAbsent;

    /// <summary>The first of <paramref name="names"/> present as a number, else <paramref name="fallback"/>.</summary>
    public double Double(double fallback, params string[] names)
    {
        foreach (var n in names) if (Number(Json[n]) is { } d) return d;
        return fallback;
    }

    /// <summary>The number <paramref name="name"/>: <paramref name="whenAbsent"/> when the key is missing, null when it is null.</summary>
    public double? OptDouble(string name, double? whenAbsent) => Json.ContainsKey(name) ? Number(Json[name]) : whenAbsent;

    /// <summary>A boolean, or <paramref name="fallback"/>.</summary>
    public bool Bool(string name, bool fallback) => Json[name] is JsonValue v && v.TryGetValue(out bool b) ? b : fallback;

    /// <summary>The first of <paramref name="names"/> present as a string, else <paramref name="fallback"/>.</summary>
    public string String(string fallback, params string[] names)
    {
        foreach (var n in names) if (Json[n] is JsonValue v && v.TryGetValue(out string? s)) return s;
        return fallback;
    }

    /// <summary>
    /// <c>layer_types</c> ("full_attention" / "sliding_attention" per layer) when the config lists them, else the
    /// family's rule <paramref name="slidingByDefault"/> (layer index → sliding), as the transformers config computes it.
    /// </summary>
    public IReadOnlyList<string> LayerTypes(int layers, Func<int, bool> slidingByDefault)
    {
        if (Json["layer_types"] is not JsonArray listed)
            return [.. Enumerable.Range(0, layers).Select(i => slidingByDefault(i) ? ModelConfig.SlidingAttention : ModelConfig.FullAttention)];
        var types = listed.Select(t => t is JsonValue v && v.TryGetValue(out string? s) ? s : null).ToList();
        if (types.Count != layers)
            throw Error($"lists {types.Count} layer_types for {layers} layers (num_hidden_layers)");
        int bad = types.FindIndex(t => t is not (ModelConfig.FullAttention or ModelConfig.SlidingAttention));
        if (bad >= 0)
            throw Error($"has layer_types[{bad}] = {listed[bad]?.ToJsonString() ?? "null"}; expected \"{ModelConfig.FullAttention}\" or \"{ModelConfig.SlidingAttention}\"");
        return types!;
    }

    /// <summary>An <see cref="InvalidDataException"/> "'source' (model_type) <paramref name="what"/>."</summary>
    public InvalidDataException Error(string what) => new($"'{Source}' ({ModelType}) {what}.");

    // Via the JSON text: a JsonValue made from an int in code does not convert to double.
    internal static double? Number(JsonNode? n) => n is JsonValue v && v.GetValueKind() == JsonValueKind.Number
        ? double.Parse(v.ToJsonString(), System.Globalization.CultureInfo.InvariantCulture) : null;

    /// <summary>
    /// The fields every rotary decoder family (LLaMA, Mistral, Qwen, Phi-3, Gemma) reads under transformers' standard
    /// names, with the family's defaults for absent keys. The family adds its own rules (sliding window, layer types).
    /// </summary>
    public ModelConfig Decoder(DecoderDefaults d)
    {
        int hidden = Int("hidden_size"), heads = Int("num_attention_heads");
        return new ModelConfig
        {
            ModelType = ModelType,
            VocabSize = Int("vocab_size"),
            HiddenSize = hidden,
            NumLayers = Int("num_hidden_layers"),
            NumHeads = heads,
            NumKeyValueHeads = OptInt("num_key_value_heads") ?? heads,
            HeadDim = OptInt("head_dim") ?? hidden / heads,
            IntermediateSize = Int("intermediate_size"),
            MaxPositionEmbeddings = OptInt("max_position_embeddings") ?? d.MaxPositionEmbeddings,
            OriginalMaxPositionEmbeddings = OptInt("original_max_position_embeddings") ?? d.OriginalMaxPositionEmbeddings,
            NormEpsilon = Double(d.NormEpsilon, "rms_norm_eps"),
            HiddenAct = String(d.HiddenAct, d.ActivationKey),
            RopeTheta = Double(10000, "rope_theta"),
            RopeScaling = Json["rope_scaling"] as JsonObject,
            PartialRotaryFactor = Double(1, "partial_rotary_factor"),
            TieWordEmbeddings = Bool("tie_word_embeddings", d.TieWordEmbeddings),
            AttentionBias = Bool("attention_bias", false),
            MlpBias = Bool("mlp_bias", false),
            BosTokenId = OptInt("bos_token_id"),
            EosTokenId = OptInt("eos_token_id"),
            PadTokenId = OptInt("pad_token_id"),
            Raw = Json,
        };
    }
}

/// <summary>A rotary decoder family's defaults for keys a config.json may leave out (its transformers config class's).</summary>
internal sealed record DecoderDefaults
{
    /// <summary>rms_norm_eps.</summary>
    public double NormEpsilon { get; init; } = 1e-6;
    /// <summary>The activation when the key is absent.</summary>
    public string HiddenAct { get; init; } = "silu";
    /// <summary>The key of the activation (Gemma's is hidden_activation).</summary>
    public string ActivationKey { get; init; } = "hidden_act";
    /// <summary>tie_word_embeddings.</summary>
    public bool TieWordEmbeddings { get; init; }
    /// <summary>max_position_embeddings.</summary>
    public int MaxPositionEmbeddings { get; init; }
    /// <summary>original_max_position_embeddings (Phi-3 has one by default; null: absent).</summary>
    public int? OriginalMaxPositionEmbeddings { get; init; }
}
