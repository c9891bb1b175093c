using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>GPT-2's "Conv1D": y = x W + b with W stored [in, out], exactly as in its checkpoints.</summary>
internal sealed class Conv1D : nn.Module<Tensor, Tensor>, ILinear
{
    // Fields, not properties: TorchSharp names parameters after fields ("weight", not "<weight>k__BackingField")
    // and rebinds them by field name on to(dtype/device).
    public Parameter weight;
    public Parameter? bias;
    Parameter ILinear.weight => weight;
    Parameter? ILinear.bias => bias;
    public long InFeatures { get; }
    public long OutFeatures { get; }
    public bool FanInFanOut => true;
    public bool Float32Arithmetic { get; set; }

    public Conv1D(long inFeatures, long outFeatures, ScalarType dtype = ScalarType.Float32, Device? device = null)
        : base(nameof(Conv1D))
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        device ??= EmptyWeights.Device;
        weight = new Parameter(empty([inFeatures, outFeatures], dtype: dtype, device: device));
        if (device?.type != DeviceType.META) Training.Rng.Normal(weight, 0.02, Training.Rng.Unseeded); // transformers' init, never from the global generator
        bias = new Parameter(zeros(outFeatures, dtype: dtype, device: device));
        RegisterComponents();
    }

    /// <summary>x W + b, computed as torch.nn.functional.linear over the [out, in] view Wᵀ (the same addmm).</summary>
    public override Tensor forward(Tensor x) => Precision.Linear(x, weight.t(), bias, Float32Arithmetic);
}
