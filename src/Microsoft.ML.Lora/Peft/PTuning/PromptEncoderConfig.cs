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
    public override JsonObject ToJson()
    {
        var j = base.ToJson();
        j["encoder_dropout"] = EncoderDropout;
        j["encoder_hidden_size"] = EncoderHiddenSize;
        j["encoder_num_layers"] = EncoderNumLayers;
        j["encoder_reparameterization_type"] = EncoderReparameterizationType;
        return j;
    }

    internal static PromptEncoderConfig FromJson(JsonObject j, int n) => ReadShared(new PromptEncoderConfig
    {
        NumVirtualTokens = n,
        EncoderReparameterizationType = j["encoder_reparameterization_type"]?.GetValue<string>() ?? "MLP",
        EncoderHiddenSize = j["encoder_hidden_size"]?.GetValue<int>(),
        EncoderNumLayers = j["encoder_num_layers"]?.GetValue<int>() ?? 2,
        EncoderDropout = j["encoder_dropout"]?.GetValue<double>() ?? 0,
    }, j);
}
