using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// Prefix tuning (PEFT's <c>PrefixTuningConfig</c>, Li and Liang 2021): learned keys and values for
/// <see cref="PromptLearningConfig.NumVirtualTokens"/> positions in front of every layer's attention (the KV cache).
/// </summary>
public sealed record PrefixTuningConfig : PromptLearningConfig
{
    /// <summary><c>encoder_hidden_size</c>: hidden size of the projection MLP (null: token_dim).</summary>
    public int? EncoderHiddenSize { get; init; }
    /// <summary><c>prefix_projection</c>: learn a token_dim embedding and project it to the keys and values with Linear-Tanh-Linear (default false).</summary>
    public bool PrefixProjection { get; init; }

    /// <inheritdoc/>
    public override string PeftType => "PREFIX_TUNING";

    /// <summary>
    /// As PEFT: for a model with key/value heads (GQA) the prefix is sized from them, token_dim = key/value heads ×
    /// head_dim and num_attention_heads = key/value heads; encoder_hidden_size defaults to the resulting token_dim.
    /// </summary>
    public override PromptLearningConfig Resolve(ModelConfig model)
    {
        var c = (PrefixTuningConfig)base.Resolve(model);
        c = c with { TokenDim = model.NumKeyValueHeads * model.HeadDim, NumAttentionHeads = model.NumKeyValueHeads };
        return c with { EncoderHiddenSize = EncoderHiddenSize ?? c.TokenDim };
    }

    /// <inheritdoc/>
    internal override JsonObject ToJson()
    {
        var j = base.ToJson();
        j["encoder_hidden_size"] = EncoderHiddenSize;
        j["prefix_projection"] = PrefixProjection;
        return j;
    }

    /// <summary>Reads the fields of a PREFIX_TUNING adapter_config.json object (the registry's reader).</summary>
    internal static PeftConfig Read(JsonObject j, string path) => ReadShared(new PrefixTuningConfig
    {
        NumVirtualTokens = ReadVirtualTokens(j, path),
        EncoderHiddenSize = PeftJson.Int(j, "encoder_hidden_size", path),
        PrefixProjection = PeftJson.Bool(j, "prefix_projection", path) == true,
    }, j, path);
}
