using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>
/// Blockwise absmax quantization onto a code book, the kernel bitsandbytes runs on the CPU (backends/default/ops.py of
/// bitsandbytes 0.50.1) for both 4-bit weights and the nested 8-bit absmax of double quant. Torch operations only, so
/// it runs wherever the tensor lives.
/// </summary>
internal static class Blockwise
{
    /// <summary>The smallest absmax a scale divides by (bitsandbytes' clamp; as float32 the subnormal 9.99999935e-39).</summary>
    public const double MinAbsmax = 1e-38;

    /// <summary>
    /// Values the quantization arithmetic (here, <see cref="Int8Weight"/>, <see cref="QuantState4Bit"/>) works through at a
    /// time: float32 temporaries of 4 MiB stay in cache and never become a float copy of a whole matrix.
    /// </summary>
    public const long ChunkValues = 1L << 20;

    /// <summary>
    /// Quantizes the flat <paramref name="x"/> [n] (any floating dtype, converted to float32 a chunk at a time) in
    /// blocks of <paramref name="blocksize"/> consecutive values. Returns, for each element, the index of the nearest
    /// value of <paramref name="sortedCode"/> mapped through <paramref name="remap"/> when given (uint8 [n]), and the
    /// absmax of each block (float32 [ceil(n / blocksize)]). Works through at most <paramref name="chunkValues"/> values
    /// (whole blocks) at a time.
    /// </summary>
    /// <remarks>
    /// Full blocks store their absmax as it is (an all-zero block stores 0) and scale by x * (1 / max(absmax, 1e-38));
    /// the tail block stores max(absmax, 1e-38) and scales by a true division. Both clamp to [-1, 1], so an all-zero
    /// block quantizes to the code of 0, never NaN. The nearest code is bucketize's on the float32 midpoints of the code
    /// book (<see cref="NearestCode"/>): a value exactly on a midpoint takes the lower code.
    /// </remarks>
    public static (Tensor Indices, Tensor Absmax) Quantize(Tensor x, Tensor sortedCode, long blocksize, Tensor? remap = null, long chunkValues = ChunkValues)
    {
        using var scope = NewDisposeScope();
        long n = x.shape[0];
        long full = n / blocksize, rem = n % blocksize;
        var absmax = empty(full + (rem > 0 ? 1 : 0), dtype: ScalarType.Float32, device: x.device);
        using var nearest = new NearestCode(sortedCode);
        var indices = empty(n, dtype: ScalarType.Byte, device: x.device);
        if (full > 0)
        {
            // Block by block in bounded chunks (float32 temporaries of 4 MiB): never a float or index copy of the matrix.
            long chunkBlocks = Math.Max(1, chunkValues / blocksize);
            for (long b = 0; b < full; b += chunkBlocks)
            {
                using var inner = NewDisposeScope();
                long nb = Math.Min(chunkBlocks, full - b);
                var blocks = x.narrow(0, b * blocksize, nb * blocksize).to_type(ScalarType.Float32).view(nb, blocksize);
                var max = blocks.abs().amax([1]);
                absmax.narrow(0, b, nb).copy_(max);
                var scaled = blocks.mul(max.clamp_min(MinAbsmax).reciprocal_().unsqueeze(1)).clamp_(-1, 1);
                indices.narrow(0, b * blocksize, nb * blocksize).copy_(Remap(nearest.Indices(scaled.view(-1)), remap));
            }
        }
        if (rem > 0)
        {
            var tail = x.narrow(0, full * blocksize, rem).to_type(ScalarType.Float32);
            var max = tail.abs().max().clamp_min(MinAbsmax);
            absmax.narrow(0, full, 1).copy_(max.view(1));
            indices.narrow(0, full * blocksize, rem).copy_(Remap(nearest.Indices((tail / max).clamp(-1, 1)), remap));
        }
        return (indices.MoveToOuterDisposeScope(), absmax.MoveToOuterDisposeScope());
    }

    private static Tensor Remap(Tensor sortedIndex, Tensor? remap) => remap is null ? sortedIndex : remap.index_select(0, sortedIndex);

    /// <summary>
    /// <paramref name="values"/> (float32 [n], the decoded codes) times the absmax of their block of
    /// <paramref name="blocksize"/>, in float32: [n].
    /// </summary>
    public static Tensor ScaleBlocks(Tensor values, Tensor absmax, long blocksize)
    {
        using var scope = NewDisposeScope();
        long n = values.shape[0];
        long blocks = absmax.shape[0];
        long padded = blocks * blocksize;
        var v = padded != n ? nn.functional.pad(values, [0, padded - n]) : values;
        var result = (v.view(blocks, blocksize) * absmax.unsqueeze(1)).view(-1);
        return (padded != n ? result.narrow(0, 0, n).contiguous() : result).MoveToOuterDisposeScope();
    }
}
