using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// DoRA's magnitude for one adapter of a <see cref="LoraLinear"/> (PEFT's <c>lora/dora.py</c> DoraLinearLayer):
/// <c>weight</c> is the vector m [out], and the layer adds (m / n - 1) · (W x) + (m / n) · s · B A x to the base output,
/// where n = ‖W + s B A‖ per output row is DETACHED (DoRA paper, section 4.3): backward treats it as a constant.
/// W is the base's float weight: over a quantized base (LLM.int8, NF4/FP4) the caller passes the dequantized weight,
/// as PEFT's <c>dequantize_module_weight(base_layer)</c>.
/// In memory the parameter is <c>lora_magnitude_vector.&lt;adapter&gt;.weight</c>; PEFT saves it as
/// <c>lora_magnitude_vector</c>, without the <c>.weight</c>.
/// </summary>
internal sealed class DoraLinearLayer : nn.Module
{
#pragma warning disable IDE1006 // PEFT's parameter name
    public Parameter weight;
#pragma warning restore IDE1006
    private readonly bool _fanInFanOut;

    /// <summary>m = ‖W + s B A‖ per output row (‖W‖ when B is zero), in the adapter's dtype (PEFT's update_layer).</summary>
    public DoraLinearLayer(Tensor baseWeight, Tensor loraA, Tensor loraB, double scaling, bool fanInFanOut) : base(nameof(DoraLinearLayer))
    {
        _fanInFanOut = fanInFanOut;
        using (no_grad())
        using (var scope = NewDisposeScope())
        {
            var lora = matmul(loraB, loraA);
            weight = new Parameter(WeightNorm(baseWeight.to(lora.dtype), lora, scaling).MoveToOuterDisposeScope());
        }
        RegisterComponents();
    }

    /// <summary>‖W + scaling · lora‖ over each output row (torch.linalg.norm(dim=1)); W is laid out as the base stores it, lora [out, in].</summary>
    public Tensor WeightNorm(Tensor baseWeight, Tensor lora, double scaling)
    {
        using var scope = NewDisposeScope();
        var w = _fanInFanOut ? baseWeight.t() : baseWeight;
        return linalg.vector_norm(w + lora.mul(scaling), dims: [1]).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The DoRA term added to the base output (PEFT's forward): <paramref name="x"/> is the adapter's (dropped-out)
    /// input; <paramref name="baseResult"/> is W x without bias, computed by the caller.
    /// </summary>
    public Tensor Forward(Tensor x, Linear loraA, Linear loraB, double scaling, Tensor baseWeight, Tensor baseResult)
    {
        using var scope = NewDisposeScope();
        // PEFT computes B A through the layers on an identity (not B.weight @ A.weight), then detaches it.
        var eye = torch.eye(loraA.weight!.shape[1], dtype: x.dtype, device: x.device);
        var loraWeight = loraB.forward(loraA.forward(eye)).t();
        var norm = WeightNorm(baseWeight.to(x.dtype), loraWeight.detach(), scaling).detach();
        var scale = (weight / norm).view(1, -1);
        var loraResult = loraB.forward(loraA.forward(x));
        return ((scale - 1) * baseResult + scale * loraResult * scaling).MoveToOuterDisposeScope();
    }
}
