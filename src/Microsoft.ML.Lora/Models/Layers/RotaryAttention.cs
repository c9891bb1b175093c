using Microsoft.ML.Lora.Generation;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>
/// Self-attention of the rotary decoder families: the family's module projects q, k and v (its own parameter names:
/// q_proj/k_proj/v_proj, Phi-3's fused qkv_proj, Qwen3's q_norm/k_norm) and calls <see cref="Attend"/>, which rotates,
/// appends to the KV cache, repeats key/value heads (GQA) and attends.
/// </summary>
internal abstract class RotaryAttention : nn.Module
{
    protected RotaryAttention(string name, ModelConfig c) : base(name)
    {
        Heads = c.NumHeads;
        KvHeads = c.NumKeyValueHeads;
        HeadDim = c.HeadDim;
    }

    /// <summary>Number of query heads.</summary>
    protected long Heads { get; }
    /// <summary>Number of key/value heads.</summary>
    protected long KvHeads { get; }
    /// <summary>Size of each head.</summary>
    protected long HeadDim { get; }

    /// <summary>
    /// x: (batch, seq, hidden), bias: (batch, 1, seq, past + seq), cos/sin: (batch, 1, seq, rotary_dim) →
    /// (batch, seq, hidden). <paramref name="layer"/> indexes <paramref name="cache"/>.
    /// </summary>
    public abstract Tensor forward(Tensor x, Tensor bias, Tensor cos, Tensor sin, KvCache? cache, int layer);

    /// <summary>
    /// q: (batch, heads, seq, head_dim), k and v: (batch, kv_heads, seq, head_dim) → (batch, seq, heads * head_dim).
    /// Without <paramref name="scale"/> and <paramref name="softcap"/> this is torch's scaled_dot_product_attention
    /// (scale 1/√head_dim); with either, transformers' eager attention (<see cref="Attention.Eager"/>).
    /// </summary>
    protected Tensor Attend(Tensor q, Tensor k, Tensor v, Tensor bias, Tensor cos, Tensor sin, KvCache? cache, int layer,
        double? scale = null, double? softcap = null)
    {
        q = Rotary.Apply(q, cos, sin);
        k = Rotary.Apply(k, cos, sin);
        if (cache is not null) (k, v) = cache.Update(layer, k, v);         // (batch, kv_heads, past + seq, head_dim)
        long groups = Heads / KvHeads;
        k = Attention.RepeatKv(k, groups);                                 // (batch, heads, past + seq, head_dim)
        v = Attention.RepeatKv(v, groups);
        var y = scale is null && softcap is null
            ? Attention.Sdpa(q, k, v, bias)
            : Attention.Eager(q, k, v, bias, scale ?? 1.0 / Math.Sqrt(HeadDim), softcap); // (batch, heads, seq, head_dim)
        return Attention.MergeHeads(y);
    }
}
