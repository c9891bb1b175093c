using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>An input embedding wrapped by an adapter (PEFT's LoRA Embedding); <see cref="weight"/> is the base matrix.</summary>
internal interface IWrappedEmbedding
{
    /// <summary>The base embedding matrix [vocab, hidden] (what a tied lm_head multiplies by).</summary>
    Parameter weight { get; }
}

/// <summary>The matrix of an input embedding module, wrapped or not: what a tied lm_head uses, as transformers ties lm_head.weight to it.</summary>
internal static class EmbeddingWeight
{
    /// <summary>The [vocab, hidden] matrix of <paramref name="embedding"/>.</summary>
    public static Tensor Of(nn.Module<Tensor, Tensor> embedding) => embedding switch
    {
        Embedding e => e.weight!,
        IWrappedEmbedding w => w.weight,
        _ => throw new InvalidOperationException($"{embedding.GetType().Name} is not an embedding."),
    };
}
