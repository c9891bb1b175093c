using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>torch.nn.LayerNorm computed in float32 whatever the dtype of its weights; returns float32.</summary>
internal sealed class LayerNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    public Parameter bias;

    public LayerNorm(long size, double eps = 1e-5) : base(nameof(LayerNorm))
    {
        weight = new Parameter(ones(size, device: EmptyWeights.Device));
        bias = new Parameter(zeros(size, device: EmptyWeights.Device));
        Size = size;
        Eps = eps;
        RegisterComponents();
    }

    public long Size { get; }
    public double Eps { get; }

    public override Tensor forward(Tensor x) =>
        nn.functional.layer_norm(x.As(Precision.Compute), [Size], weight.As(Precision.Compute), bias.As(Precision.Compute), Eps);
}
