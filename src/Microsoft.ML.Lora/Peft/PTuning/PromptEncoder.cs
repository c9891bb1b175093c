using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// P-tuning's encoder with MLP reparameterisation (PEFT's <c>PromptEncoder</c>): a learned <c>embedding</c>
/// (n, token_dim) through <c>mlp_head</c> = Linear(token_dim, h) → ReLU → Linear(h, h) → ReLU → Linear(h, token_dim).
/// </summary>
internal static class PromptEncoder
{
    /// <summary>Draws the embedding, then each linear's weight and bias, in PEFT's order from <paramref name="generator"/>.</summary>
    public static ReparameterizedPrompt Create(PromptEncoderConfig c, Generator generator)
    {
        long d = c.TokenDim!.Value, h = c.EncoderHiddenSize!.Value;
        var embedding = PromptEncoderInit.Embedding(c.NumVirtualTokens, d, generator);
        return new ReparameterizedPrompt(embedding, "mlp_head", nn.Sequential(
            ("0", PromptEncoderInit.Linear(d, h, generator)), ("1", nn.ReLU()),
            ("2", PromptEncoderInit.Linear(h, h, generator)), ("3", nn.ReLU()),
            ("4", PromptEncoderInit.Linear(h, d, generator))));
    }
}
