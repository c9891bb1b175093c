using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>
/// RMSNorm computed and returned in float32 (transformers' LlamaRMSNorm and Gemma2RMSNorm upcast too):
/// <c>weight * x / sqrt(mean(x²) + eps)</c>, or with <c>unitOffset</c> Gemma's <c>(1 + weight) * x / sqrt(mean(x²) + eps)</c>
/// (its weight then starts at 0).
/// </summary>
internal sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    private readonly double _eps;
    private readonly bool _unitOffset;

    public RmsNorm(long size, double eps, bool unitOffset = false) : base("RMSNorm")
    {
        weight = new Parameter(unitOffset ? zeros(size, device: EmptyWeights.Device) : ones(size, device: EmptyWeights.Device));
        _eps = eps;
        _unitOffset = unitOffset;
        RegisterComponents();
    }

    /// <summary>x: (..., size) → (..., size) float32.</summary>
    public override Tensor forward(Tensor x)
    {
        var h = x.As(Precision.Compute);
        var normed = h * rsqrt(h.pow(2).mean([-1], keepdim: true) + _eps); // (..., size)
        var w = weight.As(Precision.Compute);
        return (_unitOffset ? 1.0 + w : w) * normed;
    }
}
