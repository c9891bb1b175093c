using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// Prefix tuning's encoder (PEFT's <c>PrefixEncoder</c>). With <c>prefix_projection</c>: a learned <c>embedding</c>
/// (n, token_dim) through <c>transform</c> = Linear(token_dim, encoder_hidden_size) → Tanh →
/// Linear(encoder_hidden_size, 2 · layers · token_dim); without, a <see cref="PromptEmbedding"/> of width
/// 2 · layers · token_dim.
/// </summary>
internal static class PrefixEncoder
{
    /// <summary>The encoder of <paramref name="c"/>, drawn from <paramref name="generator"/> in PEFT's order.</summary>
    public static nn.Module Create(PrefixTuningConfig c, Generator generator)
    {
        long d = c.TokenDim!.Value, h = c.EncoderHiddenSize!.Value, width = 2L * c.NumLayers!.Value * d;
        if (!c.PrefixProjection) return new PromptEmbedding(PromptEncoderInit.Embedding(c.NumVirtualTokens, width, generator));
        var embedding = PromptEncoderInit.Embedding(c.NumVirtualTokens, d, generator);
        return new ReparameterizedPrompt(embedding, "transform", nn.Sequential(
            ("0", PromptEncoderInit.Linear(d, h, generator)), ("1", nn.Tanh()), ("2", PromptEncoderInit.Linear(h, width, generator))));
    }
}
