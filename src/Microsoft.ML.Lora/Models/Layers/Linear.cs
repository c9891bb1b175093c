using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>y = x Wᵀ + b with W stored [out, in], as torch.nn.Linear and Hugging Face checkpoints store it.</summary>
internal sealed class Linear : nn.Module<Tensor, Tensor>, ILinear
{
    // Fields, not properties: TorchSharp names parameters after fields ("weight", not "<weight>k__BackingField")
    // and rebinds them by field name on to(dtype/device).
    public Parameter weight;
    public Parameter? bias;
    Parameter ILinear.weight => weight;
    Parameter? ILinear.bias => bias;
    public long InFeatures { get; }
    public long OutFeatures { get; }
    public bool FanInFanOut => false;
    public bool Float32Arithmetic { get; set; }

    public Linear(long inFeatures, long outFeatures, bool hasBias = true, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(nameof(Linear))
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        device ??= EmptyWeights.Device;
        weight = new Parameter(empty(outFeatures, inFeatures, dtype: dtype, device: device));
        bias = hasBias ? new Parameter(zeros(outFeatures, dtype: dtype, device: device)) : null;
        if (device?.type != DeviceType.META) Training.Rng.KaimingUniform(weight, a: Math.Sqrt(5), Training.Rng.Unseeded); // torch's init, never from the global generator
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => Precision.Linear(x, weight, bias, Float32Arithmetic);
}
