using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>
/// LLM.int8 weights as bitsandbytes' <c>Int8Params</c> hold them (outlier threshold 0): each row of the float16-rounded
/// weight scaled by 127 / max|row| and rounded to int8, with the row's max|row| kept as <c>SCB</c>.
/// </summary>
internal static class Int8Weight
{
    /// <summary>bitsandbytes' 1/127 in float32 (int8_vectorwise_dequant's 7.874015718698502e-3).</summary>
    public const float InverseScale = 0.007874016f;

    /// <summary>
    /// Quantizes <paramref name="weight"/> [out, in] (any floating dtype) row by row: int8 [out, in] and float32 SCB [out],
    /// at most <paramref name="chunkValues"/> values (whole rows) at a time.
    /// </summary>
    /// <remarks>
    /// As bitsandbytes' int8_vectorwise_quant on its PyTorch kernel: the weight is cast to float16 first; the scale is
    /// (1 / SCB) * 127 in float32 (torch evaluates 127 / t as t.reciprocal() * 127, two roundings); round half to even.
    /// An all-zero row (SCB 0) gives zeros: torch's NaN-to-int8 cast does on x86 and CUDA's __float2int_rn does; here it
    /// is explicit, so it holds on every device.
    /// </remarks>
    public static (Tensor Weight, Tensor Scb) Quantize(Tensor weight, long chunkValues = Blockwise.ChunkValues)
    {
        if (weight.dim() != 2) throw new ArgumentException($"LLM.int8 quantizes 2-D weights [out, in]; got [{string.Join(", ", weight.shape)}].");
        if (!weight.is_floating_point()) throw new ArgumentException($"LLM.int8 quantizes floating weights; got {weight.dtype}.");
        long rows = weight.shape[0];
        var q = empty(weight.shape, dtype: ScalarType.Int8, device: weight.device);
        var scb = empty(rows, dtype: ScalarType.Float32, device: weight.device);
        // Bounded chunks of rows: float32 temporaries of a whole 7B-model matrix would cost 4 bytes a value.
        long chunk = Math.Max(1, chunkValues / Math.Max(1, weight.shape[1]));
        for (long r = 0; r < rows; r += chunk)
        {
            using var scope = NewDisposeScope();
            long nr = Math.Min(chunk, rows - r);
            var w16 = weight.narrow(0, r, nr).to_type(ScalarType.Float16);
            var max = w16.abs().amax([1]).to_type(ScalarType.Float32);
            scb.narrow(0, r, nr).copy_(max);
            var scale = max.reciprocal().mul(127).unsqueeze(1);
            var rounded = (w16.to_type(ScalarType.Float32) * scale).round();
            rounded.masked_fill_((max == 0).unsqueeze(1), 0);
            q.narrow(0, r, nr).copy_(rounded.to_type(ScalarType.Int8));
        }
        return (q, scb);
    }

    /// <summary>
    /// (q · SCB) · (1/127), left to right in float32, then cast to <paramref name="dtype"/>: [out, in]. Computed in chunks
    /// of rows of at most <paramref name="chunkValues"/> values straight into the result, so the float32 copy of the
    /// weight never exists whole (a 16,384 × 4,096 weight would need 256 MiB of it, twice).
    /// </summary>
    public static Tensor Dequantize(Tensor weight, Tensor scb, ScalarType dtype = ScalarType.Float32, long chunkValues = Blockwise.ChunkValues)
    {
        var result = empty(weight.shape, dtype: dtype, device: weight.device);
        long rows = weight.shape[0], chunk = Math.Max(1, chunkValues / Math.Max(1, weight.shape[1]));
        using var _ = no_grad();
        for (long r = 0; r < rows; r += chunk)
        {
            using var scope = NewDisposeScope();
            long nr = Math.Min(chunk, rows - r);
            var into = result.narrow(0, r, nr);
            var w = dtype == ScalarType.Float32 ? into.copy_(weight.narrow(0, r, nr)) : weight.narrow(0, r, nr).to_type(ScalarType.Float32);
            w.mul_(scb.narrow(0, r, nr).unsqueeze(1)).mul_(InverseScale);
            if (dtype != ScalarType.Float32) into.copy_(w);
        }
        return result;
    }
}
