using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;
using Linear = Microsoft.ML.Lora.Models.Layers.Linear;

namespace Microsoft.ML.Lora.Models;

#pragma warning disable IDE1006 // field names are Hugging Face's parameter names

/// <summary>
/// Qwen3 (transformers' Qwen3ForCausalLM): the LLaMA skeleton with an RMSNorm over head_dim on every query and key
/// head (q_norm, k_norm) after the projection and before the rotation; attention_bias on q/k/v/o (default false);
/// Qwen2's sliding-window rule. Qwen3Config's defaults: head_dim 128, rms_norm_eps 1e-6, 32768 positions, untied.
/// </summary>
internal static class Qwen3Family
{
    public static readonly Architecture Qwen3 = LlamaFamily.Describe("qwen3", "Qwen3ForCausalLM",
        new LlamaParts(c => new Qwen3Attention(c), c => new LlamaMlp(c)),
        r => LlamaFamily.QwenSlidingRule(r, r.Decoder(new DecoderDefaults { MaxPositionEmbeddings = 32768 })
            with { HeadDim = r.OptInt("head_dim") ?? 128 })) with
    {
        Ia3Targets = ["q_proj", "v_proj", "down_proj"],
    };
}

/// <summary>q_proj → q_norm, k_proj → k_norm (per head), v_proj, o_proj.</summary>
internal sealed class Qwen3Attention : RotaryAttention
{
    internal nn.Module<Tensor, Tensor> q_proj;
    internal nn.Module<Tensor, Tensor> k_proj;
    internal nn.Module<Tensor, Tensor> v_proj;
    internal nn.Module<Tensor, Tensor> o_proj;
    internal RmsNorm q_norm;
    internal RmsNorm k_norm;

    public Qwen3Attention(ModelConfig c) : base("Qwen3Attention", c)
    {
        q_proj = new Linear(c.HiddenSize, Heads * HeadDim, c.AttentionBias);
        k_proj = new Linear(c.HiddenSize, KvHeads * HeadDim, c.AttentionBias);
        v_proj = new Linear(c.HiddenSize, KvHeads * HeadDim, c.AttentionBias);
        o_proj = new Linear(Heads * HeadDim, c.HiddenSize, c.AttentionBias);
        q_norm = new RmsNorm(HeadDim, c.NormEpsilon);
        k_norm = new RmsNorm(HeadDim, c.NormEpsilon);
        RegisterComponents();
    }

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden).</summary>
    public override Tensor forward(Tensor x, Tensor bias, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        // The norms act on the last dimension, head_dim, before the heads move in front of seq.
        var q = q_norm.forward(q_proj.forward(x).view(x.shape[0], x.shape[1], Heads, HeadDim)).transpose(1, 2);   // (batch, heads, seq, head_dim)
        var k = k_norm.forward(k_proj.forward(x).view(x.shape[0], x.shape[1], KvHeads, HeadDim)).transpose(1, 2); // (batch, kv_heads, seq, head_dim)
        var v = Attention.SplitHeads(v_proj.forward(x), KvHeads, HeadDim);                                        // (batch, kv_heads, seq, head_dim)
        return o_proj.forward(Attend(q, k, v, bias, cos, sin, cache, layer));
    }
}
