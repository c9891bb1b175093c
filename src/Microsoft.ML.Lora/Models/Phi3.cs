using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;
using Linear = Microsoft.ML.Lora.Models.Layers.Linear;

namespace Microsoft.ML.Lora.Models;

#pragma warning disable IDE1006 // field names are Hugging Face's parameter names

/// <summary>
/// Phi-3 (transformers' Phi3ForCausalLM): the LLaMA skeleton with a fused <c>qkv_proj</c> (q rows, then k, then v) and a
/// fused <c>gate_up_proj</c> (gate outputs, then up), no biases, partial rotary (partial_rotary_factor) and longrope
/// scaling (original_max_position_embeddings, default 4096). Every layer slides when sliding_window is set.
/// PEFT 0.18 has no default LoRA or IA3 targets for phi3. Phi3Config's defaults: rms_norm_eps 1e-5, 4096 positions, untied.
/// </summary>
internal static class Phi3Family
{
    public static readonly Architecture Phi3 = LlamaFamily.Describe("phi3", "Phi3ForCausalLM",
        new LlamaParts(c => new Phi3Attention(c), c => new Phi3Mlp(c)),
        r => r.Decoder(new DecoderDefaults { NormEpsilon = 1e-5, MaxPositionEmbeddings = 4096, OriginalMaxPositionEmbeddings = 4096 })
            with { SlidingWindow = r.OptInt("sliding_window") }) with
    {
        BlockLinears = c =>
        {
            long h = c.HiddenSize, i = c.IntermediateSize, q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim;
            return [("self_attn.qkv_proj", h, q + 2 * kv), ("self_attn.o_proj", q, h), ("mlp.gate_up_proj", h, 2 * i), ("mlp.down_proj", i, h)];
        },
        LoraTargets = null,
        Ia3Targets = null,
        Ia3FeedforwardModules = null,
    };
}

/// <summary>qkv_proj (outputs: heads × head_dim of q, kv_heads × head_dim of k, then of v) and o_proj.</summary>
internal sealed class Phi3Attention : RotaryAttention
{
    internal nn.Module<Tensor, Tensor> qkv_proj;
    internal nn.Module<Tensor, Tensor> o_proj;

    public Phi3Attention(ModelConfig c) : base("Phi3Attention", c)
    {
        qkv_proj = new Linear(c.HiddenSize, (Heads + 2 * KvHeads) * HeadDim, hasBias: false);
        o_proj = new Linear(Heads * HeadDim, c.HiddenSize, hasBias: false);
        RegisterComponents();
    }

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden).</summary>
    public override Tensor forward(Tensor x, Tensor bias, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        var qkv = qkv_proj.forward(x).split([Heads * HeadDim, KvHeads * HeadDim, KvHeads * HeadDim], -1); // (batch, seq, heads·d | kv·d | kv·d)
        var q = Attention.SplitHeads(qkv[0], Heads, HeadDim);   // (batch, heads, seq, head_dim)
        var k = Attention.SplitHeads(qkv[1], KvHeads, HeadDim); // (batch, kv_heads, seq, head_dim)
        var v = Attention.SplitHeads(qkv[2], KvHeads, HeadDim); // (batch, kv_heads, seq, head_dim)
        return o_proj.forward(Attend(q, k, v, bias, cos, sin, cache, layer));
    }
}

/// <summary>down_proj(up * act(gate)) with gate, up = gate_up_proj(x).chunk(2).</summary>
internal sealed class Phi3Mlp : nn.Module<Tensor, Tensor>
{
    internal nn.Module<Tensor, Tensor> gate_up_proj;
    internal nn.Module<Tensor, Tensor> down_proj;
    private readonly string _act;

    public Phi3Mlp(ModelConfig c) : base("Phi3MLP")
    {
        gate_up_proj = new Linear(c.HiddenSize, 2L * c.IntermediateSize, hasBias: false);
        down_proj = new Linear(c.IntermediateSize, c.HiddenSize, hasBias: false);
        _act = c.HiddenAct;
        RegisterComponents();
    }

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden) through (batch, seq, 2 × intermediate).</summary>
    public override Tensor forward(Tensor x)
    {
        var gateUp = gate_up_proj.forward(x).chunk(2, -1); // 2 × (batch, seq, intermediate)
        return down_proj.forward(gateUp[1] * Activations.Apply(_act, gateUp[0]));
    }
}
