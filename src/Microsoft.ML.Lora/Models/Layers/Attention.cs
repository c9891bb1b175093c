using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>Masks, positions and attention shared by the architectures.</summary>
internal static class Attention
{
    /// <summary>The mask to use: <paramref name="attentionMask"/> or all ones [batch, past + time] (<paramref name="input"/>: ids or embeddings, [batch, time, ...]).</summary>
    public static Tensor FullMask(Tensor input, Tensor? attentionMask, long past) =>
        attentionMask is null
            ? ones([input.shape[0], past + input.shape[1]], dtype: ScalarType.Int64, device: input.device)
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

    /// <summary>
    /// transformers' eager_attention_forward in float32: scores = q kᵀ · scale, soft-capped as softcap · tanh(scores / softcap)
    /// when <paramref name="softcap"/> is set (Gemma 2), plus the mask, softmax, times v. q: (batch, heads, seq, head_dim),
    /// k and v: (batch, heads, keys, head_dim), mask: (batch, 1, seq, keys) → (batch, heads, seq, head_dim).
    /// </summary>
    public static Tensor Eager(Tensor q, Tensor k, Tensor v, Tensor mask, double scale, double? softcap)
    {
        var scores = q.As(Precision.Compute).matmul(k.As(Precision.Compute).transpose(2, 3)) * scale; // (batch, heads, seq, keys)
        if (softcap is double cap) scores = (scores / cap).tanh() * cap;
        var weights = (scores + mask).softmax(-1);
        return weights.matmul(v.As(Precision.Compute));
    }

    /// <summary>[B, T, H * D] to [B, H, T, D].</summary>
    public static Tensor SplitHeads(Tensor x, long heads, long headDim) =>
        x.view(x.shape[0], x.shape[1], heads, headDim).transpose(1, 2);

    /// <summary>[B, H, T, D] to [B, T, H * D].</summary>
    public static Tensor MergeHeads(Tensor x) =>
        x.transpose(1, 2).reshape(x.shape[0], x.shape[2], x.shape[1] * x.shape[3]);
}

/// <summary>
/// The additive masks of one forward pass, one per distinct sliding window of the layers (full attention and at most
/// one window in the supported families), built once and shared by the layers that use them.
/// </summary>
internal sealed class LayerMasks(Tensor mask, long time, ScalarType dtype, ModelConfig config)
{
    private readonly Dictionary<int, Tensor> _byWindow = new();
    private Tensor? _full;

    /// <summary>The mask (batch, 1, seq, past + seq) of layer <paramref name="layer"/> (its sliding window from the config).</summary>
    public Tensor For(int layer)
    {
        if (config.SlidingWindowOf(layer) is not int w) return _full ??= Attention.CausalMask(mask, time, dtype);
        if (!_byWindow.TryGetValue(w, out var m)) _byWindow[w] = m = Attention.CausalMask(mask, time, dtype, w);
        return m;
    }
}
