using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>
/// Mixed precision as transformers runs bfloat16/float16 models, a bit stricter: weights stay in their dtype and the
/// linear layers compute in it, while the residual stream, norms, rotary angles, attention and logits are float32.
/// For float32 models every cast here is a no-op. On request (<see cref="ILinear.Float32Arithmetic"/>), the linear
/// layers of a bfloat16 model multiply in float32 arithmetic as well (<see cref="Float32Linear"/>).
/// </summary>
internal static class Precision
{
    /// <summary>The dtype of the residual stream and of everything precision-sensitive.</summary>
    public const ScalarType Compute = ScalarType.Float32;

    /// <summary><paramref name="x"/> itself when it already has <paramref name="dtype"/>, else a converted copy.</summary>
    public static Tensor As(this Tensor x, ScalarType dtype) => x.dtype == dtype ? x : x.to_type(dtype);

    /// <summary>
    /// torch.nn.functional.linear(x, w, bias) for <paramref name="w"/> [out, in]: in w's dtype, or in float32 arithmetic
    /// when <paramref name="float32Arithmetic"/> and w is bfloat16 (then the result is float32).
    /// </summary>
    public static Tensor Linear(Tensor x, Tensor w, Tensor? bias, bool float32Arithmetic) =>
        float32Arithmetic && w.dtype == ScalarType.BFloat16
            ? Float32Linear(x, w, bias)
            : nn.functional.linear(x.As(w.dtype), w, bias);

    /// <summary>
    /// x wᵀ + bias for a bfloat16 <paramref name="w"/> [out, in] and any floating <paramref name="x"/>, in float32
    /// arithmetic: equal to the float32 product with the same weights to about 4e-6 relative (2^-18). Returns float32.
    /// The backward pass is float32 arithmetic too: d/dx = g w by the same product; w and the bias, when they require
    /// gradients, get float32 products rounded to bfloat16.
    /// </summary>
    /// <remarks>
    /// libtorch's bfloat16 matmul accumulates in float32 but rounds its result to bfloat16 (8 bits), and has no
    /// float32-output form (JAX's preferred_element_type); converting w to float32 on every call would cost a float32
    /// copy of each matrix (7 to 20 times slower here). Instead x = hi + lo, two bfloat16 numbers, so x wᵀ = hi wᵀ + lo wᵀ:
    /// one matmul of [hi; lo] reads w once for both; a second, addmm(-round(hi wᵀ), hi, wᵀ), returns the part of hi wᵀ
    /// that rounding lost, since addmm adds its first argument inside the float32 accumulator before it rounds. That is
    /// two passes over w and three times the rows of a bfloat16 matmul: on this project's CPU faster than float32 for
    /// decoding, 0.7 to 0.9 times its speed for long inputs (docs/models.md).
    /// </remarks>
    public static Tensor Float32Linear(Tensor x, Tensor w, Tensor? bias) =>
        is_grad_enabled() && (x.requires_grad || w.requires_grad || bias?.requires_grad == true)
            ? Float32LinearFunction.apply(x, w, bias!)
            : Product(x, w, bias);

    private static Tensor Product(Tensor x, Tensor w, Tensor? bias)
    {
        using var scope = NewDisposeScope();
        var x32 = x.As(Compute);
        long n = x32.shape[0];
        var hi = x32.to_type(w.dtype);
        var lo = (x32 - hi.to_type(Compute)).to_type(w.dtype);
        var wt = w.t();
        var both = cat([hi, lo]).matmul(wt);
        var hiW = both.narrow(0, 0, n);
        var lost = addmm(hiW.neg().flatten(0, -2), hi.flatten(0, -2), wt, 1, 1).view(hiW.shape);
        // A new tensor, not a view: callers (LoRA) add into it in place.
        var y = hiW.to_type(Compute) + both.narrow(0, n, n).to_type(Compute) + lost.to_type(Compute);
        if (bias is not null) y.add_(bias.As(Compute));
        return y.MoveToOuterDisposeScope();
    }

    private sealed class Float32LinearFunction : autograd.SingleTensorFunction<Float32LinearFunction>
    {
        public override string Name => nameof(Float32Linear);

        // vars: x, w, bias (or null).
        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var (x, w, bias) = ((Tensor)vars[0], (Tensor)vars[1], vars[2] as Tensor);
            ctx.save_for_backward([x, w]);
            ctx.save_data("w", w.requires_grad);
            ctx.save_data("bias", bias?.requires_grad == true ? bias.dtype : (ScalarType?)null);
            return Product(x, w, bias);
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor g)
        {
            using var scope = NewDisposeScope();
            var saved = ctx.get_saved_variables();
            var (x, w) = (saved[0], saved[1]);
            var gx = Product(g, w.t(), null).As(x.dtype);
            var rows = g.As(Compute).flatten(0, -2);
            var gw = (bool)ctx.get_data("w") ? rows.t().mm(x.As(Compute).flatten(0, -2)).to_type(w.dtype) : null;
            var gb = ctx.get_data("bias") is ScalarType b ? rows.sum([0]).to_type(b) : null;
            return [gx.MoveToOuterDisposeScope(), gw?.MoveToOuterDisposeScope()!, gb?.MoveToOuterDisposeScope()!];
        }
    }
}
