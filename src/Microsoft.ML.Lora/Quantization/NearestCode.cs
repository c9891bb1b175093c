using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>
/// For values in [-1, 1], the index of the nearest entry of a sorted code book: how many of the float32 midpoints
/// between neighbouring codes lie strictly below the value (bucketize's answer; a value on a midpoint takes the lower
/// code). bucketize is a binary search per value (15 ns each here, most of a 4-bit load); for a code book whose
/// midpoints are not too close (NF4, FP4) this uses a grid instead, with the same answers.
/// </summary>
/// <remarks>
/// The grid cuts [-1, 1] into N cells of width w = 2 / N. Cell k = (int)(v · N/2 + N/2) is within one of v's true cell:
/// v · N/2 is exact (N is a power of two) and the one rounding of the sum is below 2⁻¹⁰ for N ≤ 2¹⁴. So v lies in
/// [(k − 1)·w − 1, (k + 2)·w − 1]; every midpoint below that window is below v, every one above is above it, and the
/// grid is only used when each window holds at most two midpoints, which are compared with v one by one:
/// index = below[k] + (v > m1[k]) + (v > m2[k]). Comparisons are of float32 with float32, as bucketize's.
/// </remarks>
internal sealed class NearestCode : IDisposable
{
    private readonly Tensor _midpoints;
    private readonly long _cells;
    private readonly Tensor? _below, _first, _second;

    /// <summary>For <paramref name="sortedCode"/> (float32, ascending), on its device.</summary>
    public NearestCode(Tensor sortedCode)
    {
        long k = sortedCode.shape[0];
        using (var lower = sortedCode.narrow(0, 0, k - 1)) using (var upper = sortedCode.narrow(0, 1, k - 1)) using (var sum = lower + upper)
            _midpoints = sum / 2.0;
        var midpoints = _midpoints.cpu().data<float>().ToArray();
        // The coarsest grid whose windows (three cells) are narrower than any three consecutive midpoints span.
        double span = Enumerable.Range(0, Math.Max(0, midpoints.Length - 2)).Select(i => (double)midpoints[i + 2] - midpoints[i]).DefaultIfEmpty(2).Min();
        long cells = 32;
        while (cells <= MaxCells && 3 * (2.0 / cells) >= span) cells *= 2;
        if (cells <= MaxCells && Grid(midpoints, cells) is { } grid)
        {
            _cells = cells;
            _below = tensor(grid.Below, device: sortedCode.device);
            _first = tensor(grid.First, device: sortedCode.device);
            _second = tensor(grid.Second, device: sortedCode.device);
        }
    }

    /// <summary>The finest grid: its cell index keeps a rounding error below one cell (see remarks).</summary>
    private const long MaxCells = 1L << 14;

    /// <summary>True when the grid is used (else bucketize).</summary>
    public bool UsesGrid => _below is not null;

    private static (int[] Below, float[] First, float[] Second)? Grid(float[] midpoints, long cells)
    {
        double width = 2.0 / cells;
        var below = new int[cells];
        var first = new float[cells];
        var second = new float[cells];
        for (long c = 0; c < cells; c++)
        {
            double lo = (c - 1) * width - 1, hi = (c + 2) * width - 1;
            var inside = midpoints.Where(m => m >= lo && m <= hi).ToArray();
            if (inside.Length > 2) return null;
            below[c] = midpoints.Count(m => m < lo);
            first[c] = inside.Length > 0 ? inside[0] : float.PositiveInfinity;
            second[c] = inside.Length > 1 ? inside[1] : float.PositiveInfinity;
        }
        return (below, first, second);
    }

    /// <summary>The code index of each value of <paramref name="scaled"/> (float32 in [-1, 1], any shape): int32, same shape.</summary>
    public Tensor Indices(Tensor scaled)
    {
        if (_below is null) return bucketize(scaled, _midpoints, outInt32: true);
        using var scope = NewDisposeScope();
        double half = _cells / 2;
        // Converted before clamping: a NaN (a NaN weight) becomes some integer, then a valid cell, never a bad index.
        var cell = scaled.mul(half).add_(half).to_type(ScalarType.Int32).clamp_(0, _cells - 1).view(-1);
        var index = _below.index_select(0, cell);
        var flat = scaled.reshape(-1);
        using (var m = _first!.index_select(0, cell)) using (var gt = flat.gt(m)) index.add_(gt);
        using (var m = _second!.index_select(0, cell)) using (var gt = flat.gt(m)) index.add_(gt);
        return index.view(scaled.shape).MoveToOuterDisposeScope();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _midpoints.Dispose();
        _below?.Dispose(); _first?.Dispose(); _second?.Dispose();
    }
}
