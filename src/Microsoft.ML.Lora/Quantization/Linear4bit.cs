using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>
/// A frozen linear layer with an NF4 or FP4 weight, as bitsandbytes' <c>nn.Linear4bit</c>: forward dequantizes the
/// weight (in the dtype it was quantized from, then cast to <see cref="ComputeDType"/>) and multiplies in the compute
/// dtype; backward gives the input its gradient and never the weight. The result is in the compute dtype, as this
/// library's float <see cref="Models.Layers.Linear"/> returns its weight's dtype.
/// </summary>
internal sealed class Linear4bit : nn.Module<Tensor, Tensor>, IQuantizedLinear
{
    // Fields, not properties: TorchSharp names parameters after fields. weight is the packed uint8 codes (bitsandbytes'
    // Params4bit), frozen; the rest of the quant state is not a module tensor (its state-dict names contain dots).
    public Parameter weight;
    public Parameter? bias;
    private QuantState4Bit _state;

    Parameter Models.Layers.ILinear.weight => weight;
    Parameter? Models.Layers.ILinear.bias => bias;
    /// <inheritdoc />
    public long InFeatures { get; }
    /// <inheritdoc />
    public long OutFeatures { get; }
    /// <inheritdoc />
    public bool FanInFanOut => false;
    /// <summary>Has no effect: the arithmetic is <see cref="ComputeDType"/>'s.</summary>
    public bool Float32Arithmetic { get; set; }
    /// <summary>bnb_4bit_compute_dtype.</summary>
    public ScalarType ComputeDType { get; }
    /// <summary>The quantized weight.</summary>
    public QuantState4Bit State => _state;

    /// <summary>Wraps <paramref name="state"/> (taken over) of a weight [out, in]; <paramref name="bias"/> (taken over) may be null.</summary>
    public Linear4bit(QuantState4Bit state, Tensor? bias, ScalarType computeDType) : base(nameof(Linear4bit))
    {
        if (state.Shape.Length != 2) throw new ArgumentException($"A 4-bit linear weight is [out, in]; got [{string.Join(", ", state.Shape)}].");
        // Module tensors outlive the dispose scope a layer is built in (a merge requantizes inside one).
        state.DetachFromDisposeScope();
        bias?.DetachFromDisposeScope();
        _state = state;
        OutFeatures = state.Shape[0];
        InFeatures = state.Shape[1];
        ComputeDType = computeDType;
        weight = PackedParameter();
        this.bias = bias is null ? null : new Parameter(bias, requires_grad: false);
        RegisterComponents();
    }

    /// <inheritdoc />
    public override Tensor forward(Tensor x) => DequantizedLinearFunction.Forward(this, x);

    /// <inheritdoc />
    public Tensor DequantizeWeight(ScalarType? dtype = null)
    {
        using var w = _state.Dequantize();
        return dtype is { } d && d != w.dtype ? w.to_type(d) : w.alias();
    }

    /// <summary>Quantizes <paramref name="w"/> with this layer's quant type and double quant (PEFT's merge into Linear4bit).</summary>
    public void Requantize(Tensor w)
    {
        var state = QuantState4Bit.Quantize(w, _state.QuantType, _state.DoubleQuant, _state.Blocksize);
        state.DetachFromDisposeScope();
        _state.Dispose();
        _state = state;
        RebindWeight();
    }

    // The registered parameter is an alias of the state's packed codes (a Parameter takes over the handle it is given).
    private Parameter PackedParameter() => new(_state.Packed.alias().DetachFromDisposeScope(), requires_grad: false);

    private void RebindWeight()
    {
        weight.Dispose();
        weight = PackedParameter();
        ConditionallyRegisterParameter(nameof(weight), weight);
    }

    /// <inheritdoc />
    public List<KeyValuePair<string, Tensor>> QuantizedStateDict()
    {
        var dict = _state.StateDict();
        if (bias is not null) dict.Insert(0, new("bias", bias));
        return dict;
    }

    // bitsandbytes keeps the packed codes uint8 under model.to(dtype): only the bias converts; moves move everything.
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

    protected override nn.Module _to(DeviceType deviceType, int deviceIndex, bool non_blocking)
    {
        var device = torch.device(deviceType, deviceIndex);
        _state.To(device);
        RebindWeight();
        if (bias is not null && (bias.device_type != device.type || bias.device_index != device.index)) { bias = new Parameter(bias.to(device), requires_grad: false); ConditionallyRegisterParameter(nameof(bias), bias); }
        return this;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _state.Dispose();
        base.Dispose(disposing);
    }
}
