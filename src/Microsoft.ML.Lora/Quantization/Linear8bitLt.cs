using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>
/// A frozen linear layer with an LLM.int8 weight, as bitsandbytes' <c>nn.Linear8bitLt</c> (has_fp16_weights False):
/// int8 rows with their scale <c>SCB</c>. Forward multiplies the dequantized weight in <see cref="ComputeDType"/>, which is
/// bitsandbytes' CPU training path (MatMul8bitFp); its CUDA inference kernel also quantizes the activations to int8
/// with the outlier threshold (llm_int8_threshold), which this layer does not: its products are the float products
/// of the int8 weight, so the threshold has no effect. Backward gives the input its gradient, never the weight.
/// </summary>
internal sealed class Linear8bitLt : nn.Module<Tensor, Tensor>, IQuantizedLinear
{
#pragma warning disable IDE1006 // bitsandbytes' state-dict names, registered by field name
    public Parameter weight;
    public Parameter? bias;
    public Tensor SCB;
#pragma warning restore IDE1006

    Parameter Models.Layers.ILinear.weight => weight;
    Parameter? Models.Layers.ILinear.bias => bias;
    /// <inheritdoc />
    public long InFeatures => weight.shape[1];
    /// <inheritdoc />
    public long OutFeatures => weight.shape[0];
    /// <inheritdoc />
    public bool FanInFanOut => false;
    /// <summary>Has no effect: the arithmetic is <see cref="ComputeDType"/>'s.</summary>
    public bool Float32Arithmetic { get; set; }
    /// <summary>The dtype of the product: the model's dtype (bitsandbytes computes in the input's dtype).</summary>
    public ScalarType ComputeDType { get; }

    /// <summary>Wraps int8 <paramref name="weight"/> [out, in] and float32 <paramref name="scb"/> [out] (taken over); <paramref name="bias"/> may be null.</summary>
    public Linear8bitLt(Tensor weight, Tensor scb, Tensor? bias, ScalarType computeDType) : base(nameof(Linear8bitLt))
    {
        if (weight.dtype != ScalarType.Int8 || weight.dim() != 2) throw new ArgumentException($"An 8-bit linear weight is int8 [out, in]; got {weight.dtype} [{string.Join(", ", weight.shape)}].");
        if (scb.dtype != ScalarType.Float32 || scb.dim() != 1 || scb.shape[0] != weight.shape[0])
            throw new ArgumentException($"SCB must be float32 [{weight.shape[0]}] (one scale per row); got {scb.dtype} [{string.Join(", ", scb.shape)}].");
        // Module tensors outlive the dispose scope a layer is built in (a merge requantizes inside one).
        this.weight = new Parameter(weight.DetachFromDisposeScope(), requires_grad: false);
        SCB = scb.DetachFromDisposeScope();
        bias?.DetachFromDisposeScope();
        this.bias = bias is null ? null : new Parameter(bias, requires_grad: false);
        ComputeDType = computeDType;
        RegisterComponents();
    }

    /// <summary>Quantizes a float weight [out, in] (any floating dtype; it is read, not kept).</summary>
    public static Linear8bitLt Quantize(Tensor weight, Tensor? bias, ScalarType computeDType)
    {
        var (q, scb) = Int8Weight.Quantize(weight);
        return new Linear8bitLt(q, scb, bias, computeDType);
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor x) => DequantizedLinearFunction.Forward(this, x);

    /// <inheritdoc />
    public Tensor DequantizeWeight(ScalarType? dtype = null) => Int8Weight.Dequantize(weight, SCB, dtype ?? ScalarType.Float32);

    /// <inheritdoc />
    public void Requantize(Tensor w)
    {
        var (q, scb) = Int8Weight.Quantize(w);
        weight.Dispose(); SCB.Dispose();
        weight = new Parameter(q.DetachFromDisposeScope(), requires_grad: false);
        SCB = scb.DetachFromDisposeScope();
        ConditionallyRegisterParameter(nameof(weight), weight);
        ConditionallyRegisterBuffer(nameof(SCB), SCB);
    }

    /// <inheritdoc />
    public List<KeyValuePair<string, Tensor>> QuantizedStateDict()
    {
        var dict = new List<KeyValuePair<string, Tensor>> { new("weight", weight), new("SCB", SCB), new("weight_format", tensor((byte)0)) };
        if (bias is not null) dict.Insert(0, new("bias", bias));
        return dict;
    }

    // model.to(dtype) converts the bias only: the int8 weight and its float32 scales keep their types.
    protected override nn.Module _to(ScalarType dtype, bool non_blocking)
    {
        if (bias is not null && bias.dtype != dtype) { bias = new Parameter(bias.to_type(dtype), requires_grad: false); ConditionallyRegisterParameter(nameof(bias), bias); }
        return this;
    }

    protected override nn.Module _to(Device device, ScalarType dtype, bool non_blocking)
    {
        _to(dtype, non_blocking);
        return _to(device.type, device.index, non_blocking);
    }

    protected override nn.Module _to(DeviceType deviceType, int deviceIndex, bool non_blocking) => base._to(deviceType, deviceIndex, non_blocking);
}
