using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// The fields of a Hugging Face <c>config.json</c> that the supported architectures use, under one set of names
/// (GPT-2's <c>n_embd</c>, <c>n_layer</c>, <c>n_head</c> and BLOOM's <c>n_layer</c>, <c>n_head</c> are mapped here).
/// </summary>
public sealed record ModelConfig
{
    /// <summary>The supported values of <c>model_type</c>.</summary>
    public static readonly IReadOnlyList<string> SupportedModelTypes = ["bloom", "gpt2", "llama", "mistral", "qwen2"];

    /// <summary><c>model_type</c>: bloom, gpt2, llama, mistral or qwen2.</summary>
    public required string ModelType { get; init; }
    /// <summary>Vocabulary size.</summary>
    public required int VocabSize { get; init; }
    /// <summary>Width of the residual stream.</summary>
    public required int HiddenSize { get; init; }
    /// <summary>Number of transformer blocks.</summary>
    public required int NumLayers { get; init; }
    /// <summary>Number of query heads.</summary>
    public required int NumHeads { get; init; }
    /// <summary>Number of key/value heads (grouped-query attention); equals <see cref="NumHeads"/> when absent.</summary>
    public required int NumKeyValueHeads { get; init; }
    /// <summary>Size of each head; hidden_size / heads when absent.</summary>
    public required int HeadDim { get; init; }
    /// <summary>Width of the MLP.</summary>
    public required int IntermediateSize { get; init; }
    /// <summary>Longest sequence the positions support (n_positions / max_position_embeddings; 0 for ALiBi models without a limit).</summary>
    public int MaxPositionEmbeddings { get; init; }
    /// <summary>Epsilon of the layer norms (layer_norm_epsilon / rms_norm_eps; when absent 1e-5 for GPT-2 and BLOOM, 1e-6 otherwise).</summary>
    public double NormEpsilon { get; init; } = 1e-5;
    /// <summary>Activation name (gelu_new, silu, ...).</summary>
    public string HiddenAct { get; init; } = "";
    /// <summary>Base of rotary embeddings.</summary>
    public double RopeTheta { get; init; } = 10000;
    /// <summary><c>rope_scaling</c> as raw JSON, or null.</summary>
    public JsonObject? RopeScaling { get; init; }
    /// <summary>Whether lm_head shares the input embedding's weight (when absent: true for GPT-2 and BLOOM, false otherwise, as in transformers).</summary>
    public bool TieWordEmbeddings { get; init; } = true;
    /// <summary>Bias on q/k/v projections (Qwen2: true; LLaMA: attention_bias).</summary>
    public bool AttentionBias { get; init; }
    /// <summary>Bias on MLP projections (LLaMA's mlp_bias).</summary>
    public bool MlpBias { get; init; }
    /// <summary>Mistral/Qwen2 sliding window, or null.</summary>
    public int? SlidingWindow { get; init; }
    /// <summary>Special token ids.</summary>
    public int? BosTokenId { get; init; }
    /// <summary>End-of-sequence token id (the first when config.json lists several).</summary>
    public int? EosTokenId { get; init; }
    /// <summary>Padding token id.</summary>
    public int? PadTokenId { get; init; }
    /// <summary>The whole config.json, for fields not mapped above.</summary>
    public JsonObject Raw { get; init; } = new();

    /// <summary>Reads a config.json file.</summary>
    public static ModelConfig Load(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"No config.json at '{path}'.", path);
        JsonObject json;
        try { json = JsonNode.Parse(File.ReadAllText(path))?.AsObject() ?? throw new JsonException("empty document"); }
        catch (Exception e) when (e is JsonException or InvalidOperationException)
        { throw new InvalidDataException($"'{path}' is not a valid config.json: {e.Message}", e); }
        return Parse(json, path);
    }

    /// <summary>Maps a parsed config.json; <paramref name="source"/> names it in errors.</summary>
    public static ModelConfig Parse(JsonObject json, string source = "config.json")
    {
        string modelType = (json["model_type"] is JsonValue mt && mt.TryGetValue(out string? t) ? t : null)
            ?? throw new InvalidDataException($"'{source}' has no model_type.");
        if (!SupportedModelTypes.Contains(modelType))
            throw new NotSupportedException($"model_type '{modelType}' in '{source}' is not supported; supported: {string.Join(", ", SupportedModelTypes)}.");

        int Int(params string[] names)
        {
            foreach (var n in names) if (json[n] is JsonValue v && v.TryGetValue(out int i)) return i;
            throw new InvalidDataException($"'{source}' ({modelType}) has no {string.Join(" / ", names)}.");
        }
        int? OptInt(string name) => json[name] switch
        {
            JsonValue v when v.TryGetValue(out int i) => i,
            JsonArray { Count: > 0 } a when a[0] is JsonValue v0 && v0.TryGetValue(out int i0) => i0,
            _ => null,
        };
        double Double(double fallback, params string[] names)
        {
            foreach (var n in names) if (json[n] is JsonValue v && v.TryGetValue(out double d)) return d;
            return fallback;
        }
        bool Bool(string name, bool fallback) => json[name] is JsonValue v && v.TryGetValue(out bool b) ? b : fallback;

        // Defaults of the transformers config classes for fields a config.json may leave out.
        bool layerNorm = modelType is "gpt2" or "bloom";
        int hidden = Int("hidden_size", "n_embd", "n_embed");
        int heads = Int("num_attention_heads", "n_head");
        int? inner = modelType == "gpt2" ? OptInt("n_inner") : modelType == "bloom" ? null : Int("intermediate_size");
        return new ModelConfig
        {
            ModelType = modelType,
            VocabSize = Int("vocab_size"),
            HiddenSize = hidden,
            NumLayers = Int("num_hidden_layers", "n_layer"),
            NumHeads = heads,
            NumKeyValueHeads = OptInt("num_key_value_heads") ?? heads,
            HeadDim = OptInt("head_dim") ?? hidden / heads,
            IntermediateSize = inner ?? 4 * hidden,
            MaxPositionEmbeddings = OptInt("max_position_embeddings") ?? OptInt("n_positions") ?? 0,
            NormEpsilon = Double(layerNorm ? 1e-5 : 1e-6, "rms_norm_eps", "layer_norm_epsilon"),
            HiddenAct = json["hidden_act"]?.GetValue<string>() ?? json["activation_function"]?.GetValue<string>() ?? (modelType == "bloom" ? "gelu_pytorch_tanh" : ""),
            RopeTheta = Double(10000, "rope_theta"),
            RopeScaling = json["rope_scaling"] as JsonObject,
            TieWordEmbeddings = Bool("tie_word_embeddings", layerNorm),
            AttentionBias = modelType == "qwen2" || Bool("attention_bias", false),
            MlpBias = Bool("mlp_bias", false),
            SlidingWindow = Bool("use_sliding_window", modelType == "mistral") ? OptInt("sliding_window") : null,
            BosTokenId = OptInt("bos_token_id"),
            EosTokenId = OptInt("eos_token_id"),
            PadTokenId = OptInt("pad_token_id"),
            Raw = json,
        };
    }
}
