using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>A prompt-learning encoder: what it puts in front of the input, or in the KV cache, for virtual tokens 0..n-1.</summary>
internal interface IPromptEncoder
{
    /// <summary>(num_virtual_tokens, width): the encoder's output (PEFT's prompt_encoder(arange(n))).</summary>
    Tensor Output();
}

/// <summary>torch.nn's default initialisations, drawn from a seeded generator in torch's order (weight, then bias).</summary>
internal static class PromptEncoderInit
{
    /// <summary>torch.nn.Embedding: N(0, 1).</summary>
    public static Models.Layers.Embedding Embedding(long n, long dim, torch.Generator generator)
    {
        var e = new Models.Layers.Embedding(n, dim);
        using (no_grad()) e.weight!.normal_(0, 1, generator);
        return e;
    }

    /// <summary>torch.nn.Linear: weight kaiming_uniform_(a = √5), i.e. U(±1/√in), then bias U(±1/√in).</summary>
    public static Linear Linear(long inFeatures, long outFeatures, torch.Generator generator)
    {
        var l = Models.Layers.Uninitialized.Linear(inFeatures, outFeatures, hasBias: true);
        double a = Math.Sqrt(5);
        double gain = Math.Sqrt(2.0 / (1 + a * a));
        double bound = Math.Sqrt(3.0) * (gain / Math.Sqrt(inFeatures)); // torch's kaiming_uniform_ arithmetic
        using (no_grad())
        {
            l.weight!.uniform_(-bound, bound, generator);
            double biasBound = 1 / Math.Sqrt(inFeatures);
            l.bias!.uniform_(-biasBound, biasBound, generator);
        }
        return l;
    }
}
