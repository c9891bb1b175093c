using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// Prefix tuning's encoder (PEFT's <c>PrefixEncoder</c>) with <c>prefix_projection</c>: a learned <c>embedding</c>
/// (n, token_dim) through <c>transform</c> = Linear(token_dim, encoder_hidden_size) → Tanh →
/// Linear(encoder_hidden_size, 2 · layers · token_dim). Without projection the encoder is a
/// <see cref="PromptEmbedding"/> of width 2 · layers · token_dim.
/// </summary>
internal sealed class PrefixEncoder : nn.Module, IPromptEncoder
{
#pragma warning disable IDE1006 // PEFT's names
    public Embedding embedding;
    public Sequential transform;
#pragma warning restore IDE1006

    private PrefixEncoder(PrefixTuningConfig c, torch.Generator generator) : base(nameof(PrefixEncoder))
    {
        long d = c.TokenDim!.Value, h = c.EncoderHiddenSize!.Value;
        embedding = PromptEncoderInit.Embedding(c.NumVirtualTokens, d, generator);
        transform = nn.Sequential(("0", PromptEncoderInit.Linear(d, h, generator)), ("1", nn.Tanh()),
            ("2", PromptEncoderInit.Linear(h, 2L * c.NumLayers!.Value * d, generator)));
        RegisterComponents();
    }

    /// <summary>The encoder of <paramref name="c"/>, drawn from <paramref name="generator"/> in PEFT's order.</summary>
    public static nn.Module Create(PrefixTuningConfig c, torch.Generator generator) => c.PrefixProjection
        ? new PrefixEncoder(c, generator)
        : new PromptEmbedding(PromptEncoderInit.Embedding(c.NumVirtualTokens, 2L * c.NumLayers!.Value * c.TokenDim!.Value, generator));

    public Tensor Output() => transform.forward(embedding.weight!);
}
