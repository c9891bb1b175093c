using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>
/// torch.nn.Embedding: rows of <c>weight</c> [num_embeddings, embedding_dim] looked up by token id. A managed module
/// (TorchSharp's own builds its weight natively on the CPU whatever device it is given, which would defeat
/// <see cref="EmptyWeights"/>).
/// </summary>
internal sealed class Embedding : nn.Module<Tensor, Tensor>
{
    public Parameter weight;

    public Embedding(long numEmbeddings, long embeddingDim, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(nameof(Embedding))
    {
        device ??= EmptyWeights.Device;
        weight = new Parameter(empty(numEmbeddings, embeddingDim, dtype: dtype, device: device));
        if (device?.type != DeviceType.META) Training.Rng.Normal(weight, 1.0, Training.Rng.Unseeded); // torch's init N(0, 1), never from the global generator
        RegisterComponents();
    }

    /// <summary>Make the output require grad under autograd even over a frozen weight (<see cref="CausalLm.EnableInputRequireGrads"/>).</summary>
    public bool OutputRequiresGrad { get; set; }

    /// <summary>[..., embedding_dim] rows for ids of any shape.</summary>
    public override Tensor forward(Tensor ids)
    {
        var rows = weight[TensorIndex.Tensor(ids)];
        return OutputRequiresGrad && is_grad_enabled() && !rows.requires_grad ? rows.requires_grad_(true) : rows;
    }
}
