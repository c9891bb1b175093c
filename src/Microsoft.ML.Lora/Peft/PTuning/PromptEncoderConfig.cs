using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// P-tuning (PEFT's <c>PromptEncoderConfig</c>, Liu et al. 2021): virtual token embeddings produced by a small
/// encoder (an MLP) from a learned embedding, put in front of every sequence as in prompt tuning.
/// </summary>
public sealed record PromptEncoderConfig : PromptLearningConfig
{
    /// <summary><c>encoder_reparameterization_type</c>: "MLP" (default; "LSTM" is PEFT's other choice, not supported here).</summary>
    public string EncoderReparameterizationType { get; init; } = "MLP";
    /// <summary><c>encoder_hidden_size</c>: hidden size of the MLP (null: token_dim).</summary>
    public int? EncoderHiddenSize { get; init; }
    /// <summary><c>encoder_num_layers</c> (default 2; the MLP always has PEFT's three linear layers, as in PEFT).</summary>
    public int EncoderNumLayers { get; init; } = 2;
    /// <summary><c>encoder_dropout</c> (default 0; used by PEFT's LSTM only).</summary>
    public double EncoderDropout { get; init; }

    /// <inheritdoc/>
    public override string PeftType => "P_TUNING";

    /// <inheritdoc/>
    public override PromptLearningConfig Resolve(ModelConfig model)
    {
        if (EncoderReparameterizationType != "MLP")
            throw new NotSupportedException($"PromptEncoderConfig.EncoderReparameterizationType '{EncoderReparameterizationType}': only \"MLP\" is supported.");
        var c = (PromptEncoderConfig)base.Resolve(model);
        return c with { EncoderHiddenSize = EncoderHiddenSize ?? c.TokenDim };
    }

    /// <inheritdoc/>
    internal override JsonObject ToJson()
    {
        var j = base.ToJson();
        j["encoder_dropout"] = EncoderDropout;
        j["encoder_hidden_size"] = EncoderHiddenSize;
        j["encoder_num_layers"] = EncoderNumLayers;
        j["encoder_reparameterization_type"] = EncoderReparameterizationType;
        return j;
    }

    /// <summary>Reads the fields of a P_TUNING adapter_config.json object (the registry's reader); absent fields keep the defaults.</summary>
    internal static PeftConfig Read(JsonObject j, string path)
    {
        var c = new PromptEncoderConfig { NumVirtualTokens = ReadVirtualTokens(j, path) };
        return ReadShared(c with
        {
            EncoderReparameterizationType = PeftJson.String(j, "encoder_reparameterization_type", path) ?? c.EncoderReparameterizationType,
            EncoderHiddenSize = PeftJson.Int(j, "encoder_hidden_size", path),
            EncoderNumLayers = PeftJson.Int(j, "encoder_num_layers", path) ?? c.EncoderNumLayers,
            EncoderDropout = PeftJson.Double(j, "encoder_dropout", path) ?? c.EncoderDropout,
        }, j, path);
    }
}
