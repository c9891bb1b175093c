using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// A prompt produced by a small network from a learned embedding (reparameterisation), the form of P-tuning's
/// <see cref="PromptEncoder"/> and of prefix tuning's <see cref="PrefixEncoder"/> with projection: <c>embedding</c>
/// (n, token_dim) through a head registered under the method's PEFT name (<c>mlp_head</c>, <c>transform</c>).
/// </summary>
internal sealed class ReparameterizedPrompt : nn.Module, IPromptEncoder
{
    private readonly Embedding _embedding;
    private readonly Sequential _head;

    /// <param name="embedding">The learned embedding (registered as <c>embedding</c>).</param>
    /// <param name="headName">PEFT's name of the network.</param>
    /// <param name="head">The network; its output is the prompt.</param>
    public ReparameterizedPrompt(Embedding embedding, string headName, Sequential head) : base(nameof(ReparameterizedPrompt))
    {
        _embedding = embedding;
        _head = head;
        register_module("embedding", embedding);
        register_module(headName, head);
    }

    public Tensor Output() => _head.forward(_embedding.weight!);
}
