using System.Text.Json;
using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// The fields of a Hugging Face <c>config.json</c> that the supported architectures use, under one set of names
/// (GPT-2's <c>n_embd</c>, <c>n_layer</c>, <c>n_head</c> and BLOOM's <c>n_layer</c>, <c>n_head</c> are mapped here).
/// </summary>
public sealed record ModelConfig
{
    /// <summary>The supported values of <c>model_type</c> (one per registered architecture), sorted.</summary>
    public static IReadOnlyList<string> SupportedModelTypes => Architectures.ModelTypes;

    /// <summary>A <see cref="LayerTypes"/> entry: the layer attends to every earlier position.</summary>
    public const string FullAttention = "full_attention";
    /// <summary>A <see cref="LayerTypes"/> entry: the layer attends to the last <see cref="SlidingWindow"/> positions.</summary>
    public const string SlidingAttention = "sliding_attention";

    /// <summary><c>model_type</c>, one of <see cref="SupportedModelTypes"/>.</summary>
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
    /// <summary>Width of the sliding window of the layers that slide (Mistral, Qwen2/3 with use_sliding_window, Phi-3, Gemma 2), or null.</summary>
    public int? SlidingWindow { get; init; }
    /// <summary>
    /// Per layer <see cref="FullAttention"/> or <see cref="SlidingAttention"/> (config.json's <c>layer_types</c>, or the
    /// family's rule: Qwen2/3 slide from max_window_layers on, Gemma 2 alternates starting with sliding, Mistral and
    /// Phi-3 slide everywhere). Empty: every layer slides when <see cref="SlidingWindow"/> is set.
    /// </summary>
    public IReadOnlyList<string> LayerTypes { get; init; } = [];
    /// <summary>Fraction of head_dim that rotary embeddings rotate (Phi-3's partial_rotary_factor; 1 elsewhere).</summary>
    public double PartialRotaryFactor { get; init; } = 1;
    /// <summary>original_max_position_embeddings (Phi-3's longrope uses it), or null when the config has none.</summary>
    public int? OriginalMaxPositionEmbeddings { get; init; }

    /// <summary>The sliding window of layer <paramref name="layer"/>, or null when it attends to every earlier position.</summary>
    public int? SlidingWindowOf(int layer) =>
        LayerTypes.Count == 0 || LayerTypes[layer] == SlidingAttention ? SlidingWindow : null;
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

    /// <summary>Maps a parsed config.json with its architecture's description; <paramref name="source"/> names it in errors.</summary>
    public static ModelConfig Parse(JsonObject json, string source = "config.json")
    {
        string modelType = (json["model_type"] is JsonValue mt && mt.TryGetValue(out string? t) ? t : null)
            ?? throw new InvalidDataException($"'{source}' has no model_type.");
        var architecture = Architectures.Find(modelType)
            ?? throw new NotSupportedException($"model_type '{modelType}' in '{source}' is not supported; supported: {string.Join(", ", SupportedModelTypes)}.");
        return architecture.ReadConfig(new ConfigReader(json, source, modelType));
    }

    /// <summary>The description of this config's architecture (registry entry of <see cref="ModelType"/>).</summary>
    internal Architecture Architecture => Architectures.For(ModelType);
}
