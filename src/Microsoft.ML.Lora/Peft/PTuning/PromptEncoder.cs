using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// P-tuning's encoder with MLP reparameterisation (PEFT's <c>PromptEncoder</c>): a learned <c>embedding</c>
/// (n, token_dim) through <c>mlp_head</c> = Linear(token_dim, h) → ReLU → Linear(h, h) → ReLU → Linear(h, token_dim).
/// </summary>
internal sealed class PromptEncoder : nn.Module, IPromptEncoder
{
#pragma warning disable IDE1006 // PEFT's names
    public Embedding embedding;
    public Sequential mlp_head;
#pragma warning restore IDE1006

    /// <summary>Draws the embedding, then each linear's weight and bias, in PEFT's order from <paramref name="generator"/>.</summary>
    public PromptEncoder(PromptEncoderConfig c, torch.Generator generator) : base(nameof(PromptEncoder))
    {
        long d = c.TokenDim!.Value, h = c.EncoderHiddenSize!.Value;
        embedding = PromptEncoderInit.Embedding(c.NumVirtualTokens, d, generator);
        mlp_head = nn.Sequential(
            ("0", PromptEncoderInit.Linear(d, h, generator)), ("1", nn.ReLU()),
            ("2", PromptEncoderInit.Linear(h, h, generator)), ("3", nn.ReLU()),
            ("4", PromptEncoderInit.Linear(h, d, generator)));
        RegisterComponents();
    }

    public Tensor Output() => mlp_head.forward(embedding.weight!);
}
