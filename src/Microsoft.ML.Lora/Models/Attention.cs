using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>Masks, positions and attention shared by the architectures.</summary>
internal static class Attention
{
    /// <summary>The mask to use: <paramref name="attentionMask"/> or all ones [batch, past + time].</summary>
    public static Tensor FullMask(Tensor inputIds, Tensor? attentionMask, long past) =>
        attentionMask is null
            ? ones([inputIds.shape[0], past + inputIds.shape[1]], dtype: ScalarType.Int64, device: inputIds.device)
            : attentionMask.to_type(ScalarType.Int64);

    /// <summary>Position ids for the last <paramref name="time"/> positions: clamp(cumsum(mask) - 1, 0).</summary>
    public static Tensor PositionsFromMask(Tensor mask, long time)
    {
        var pos = (mask.cumsum(-1) - 1).clamp_min(0);
        return pos[.., ^(int)time..];
    }

    /// <summary>The most negative finite value of a floating type (what transformers adds for masked scores).</summary>
    public static double MinValue(ScalarType dtype) => dtype switch
    {
        ScalarType.Float16 => -65504.0,
        ScalarType.BFloat16 => -3.3895313892515355e38,
        ScalarType.Float64 => double.MinValue,
        _ => float.MinValue,
    };

    /// <summary>
    /// Additive mask [batch, 1, time, past + time] in <paramref name="dtype"/>: 0 where query i (at absolute index
    /// past + i) may see key j (j &lt;= past + i, mask[j] == 1, and within the sliding window if any), the most negative
    /// finite value elsewhere (so fully masked padding rows stay finite, as in transformers).
    /// </summary>
    public static Tensor CausalMask(Tensor mask, long time, ScalarType dtype, int? slidingWindow = null)
    {
        long total = mask.shape[1];
        long past = total - time;
        var device = mask.device;
        var q = arange(past, total, dtype: ScalarType.Int64, device: device).unsqueeze(1);
        var k = arange(0, total, dtype: ScalarType.Int64, device: device).unsqueeze(0);
        var allowed = k.le(q);
        if (slidingWindow is int w) allowed = allowed.logical_and(q - k < w);
        allowed = allowed.unsqueeze(0).logical_and(mask.unsqueeze(1).to_type(ScalarType.Bool)).unsqueeze(1);
        return zeros(1, dtype: dtype, device: device).masked_fill(allowed.logical_not(), MinValue(dtype));
    }

    /// <summary>Repeats key/value heads [B, kvH, S, D] to [B, kvH * groups, S, D] (transformers' repeat_kv).</summary>
    public static Tensor RepeatKv(Tensor x, long groups)
    {
        if (groups == 1) return x;
        long b = x.shape[0], h = x.shape[1], s = x.shape[2], d = x.shape[3];
        return x.unsqueeze(2).expand(b, h, groups, s, d).reshape(b, h * groups, s, d);
    }

    /// <summary>softmax(q kᵀ / √d + mask) v over [B, H, T, D] queries and [B, H, S, D] keys and values, in float32.</summary>
    public static Tensor Sdpa(Tensor q, Tensor k, Tensor v, Tensor mask) =>
        nn.functional.scaled_dot_product_attention(q.As(Precision.Compute), k.As(Precision.Compute), v.As(Precision.Compute), mask);

    /// <summary>[B, T, H * D] to [B, H, T, D].</summary>
    public static Tensor SplitHeads(Tensor x, long heads, long headDim) =>
        x.view(x.shape[0], x.shape[1], heads, headDim).transpose(1, 2);

    /// <summary>[B, H, T, D] to [B, T, H * D].</summary>
    public static Tensor MergeHeads(Tensor x) =>
        x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3]);
}
