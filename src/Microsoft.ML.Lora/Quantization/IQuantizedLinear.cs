using Microsoft.ML.Lora.Models.Layers;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>
/// A frozen linear layer whose weight is stored quantized (<see cref="Linear4bit"/>, <see cref="Linear8bitLt"/>). Its
/// <see cref="ILinear.weight"/> is the stored integer tensor (as bitsandbytes' Params4bit / Int8Params), never a float
/// weight: read the float weight with <see cref="DequantizeWeight"/>.
/// </summary>
internal interface IQuantizedLinear : ILinear
{
    /// <summary>The dtype the forward pass multiplies in (bnb_4bit_compute_dtype for 4-bit; the model's dtype for 8-bit).</summary>
    ScalarType ComputeDType { get; }

    /// <summary>The weight [out, in] dequantized to <paramref name="dtype"/> (default: the dtype it was quantized from).</summary>
    Tensor DequantizeWeight(ScalarType? dtype = null);

    /// <summary>Quantizes <paramref name="weight"/> [out, in] and replaces the stored weight by it (PEFT's merge into a quantized base).</summary>
    void Requantize(Tensor weight);

    /// <summary>The state dict bitsandbytes writes for this layer (keys relative to the module: weight, weight.absmax..., SCB, bias).</summary>
    List<KeyValuePair<string, Tensor>> QuantizedStateDict();
}

/// <summary>
/// y = x · dequantize(W)ᵀ + b for a quantized W, with a backward pass that gives the input its gradient
/// (g · dequantize(W), dequantized again) and never the weight, as bitsandbytes' MatMul4Bit: the float weight lives only
/// while one product runs, never in the autograd graph.
/// </summary>
internal sealed class DequantizedLinearFunction : autograd.SingleTensorFunction<DequantizedLinearFunction>
{
    public override string Name => "DequantizedLinear";

    /// <summary>A quantized layer's forward: x and its bias in the layer's compute dtype, then <see cref="Apply"/>.</summary>
    public static Tensor Forward(IQuantizedLinear layer, Tensor x)
    {
        var dtype = layer.ComputeDType;
        var bias = layer.bias;
        return Apply(layer, x.dtype == dtype ? x : x.to_type(dtype), bias is null || bias.dtype == dtype ? bias : bias.to_type(dtype));
    }

    /// <summary>x [..., in] in the layer's compute dtype; bias may be null.</summary>
    public static Tensor Apply(IQuantizedLinear layer, Tensor x, Tensor? bias)
    {
        if (is_grad_enabled() && (x.requires_grad || bias?.requires_grad == true))
            return apply(x, bias!, layer);
        return Product(layer, x, bias);
    }

    /// <summary>The heap's free bytes above which a product gives them back (see <see cref="Native.NativeHeap.TrimWhenFree"/>).</summary>
    private const long FreeHeapBound = 256L << 20;

    private static Tensor Product(IQuantizedLinear layer, Tensor x, Tensor? bias)
    {
        Tensor y;
        using (var w = layer.DequantizeWeight(layer.ComputeDType)) y = nn.functional.linear(x, w, bias);
        Native.NativeHeap.TrimWhenFree(FreeHeapBound);
        return y;
    }

    // vars: x, bias (or null), layer.
    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var (x, bias, layer) = ((Tensor)vars[0], vars[1] as Tensor, (IQuantizedLinear)vars[2]);
        ctx.save_data("layer", layer);
        ctx.save_data("bias", bias?.requires_grad == true ? bias.dtype : (ScalarType?)null);
        return Product(layer, x, bias);
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor g)
    {
        var layer = (IQuantizedLinear)ctx.get_data("layer");
        Tensor gx;
        using (var w = layer.DequantizeWeight(layer.ComputeDType)) gx = g.matmul(w);
        Native.NativeHeap.TrimWhenFree(FreeHeapBound);
        var gb = ctx.get_data("bias") is ScalarType b ? g.flatten(0, -2).sum([0]).to_type(b) : null;
        return [gx, gb!, null!];
    }
}
