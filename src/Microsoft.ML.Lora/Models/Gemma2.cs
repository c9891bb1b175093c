using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Linear = Microsoft.ML.Lora.Models.Layers.Linear;
using Embedding = Microsoft.ML.Lora.Models.Layers.Embedding;

namespace Microsoft.ML.Lora.Models;

#pragma warning disable IDE1006 // field names are Hugging Face's parameter names

/// <summary>
/// Gemma 2 (transformers' Gemma2ForCausalLM, eager attention): embeddings times √hidden, RMSNorm with (1 + weight),
/// sandwich norms around attention and MLP, GeGLU MLP (hidden_activation), attention scale query_pre_attn_scalar^-½,
/// attention logits soft-capped (attn_logit_softcapping) before the mask, final logits soft-capped
/// (final_logit_softcapping), sliding-window layers alternating with full ones (layer_types; layer 0 slides).
/// Gemma2Config's defaults: head_dim 256, query_pre_attn_scalar 256, sliding_window 4096, soft-caps 50 and 30, tied.
/// </summary>
internal static class Gemma2Family
{
    public static readonly Architecture Gemma2 = LlamaFamily.Describe("gemma2", "Gemma2ForCausalLM", LlamaParts.Llama, r =>
    {
        var c = r.Decoder(new DecoderDefaults { HiddenAct = "gelu_pytorch_tanh", ActivationKey = "hidden_activation", TieWordEmbeddings = true, MaxPositionEmbeddings = 8192 });
        return c with
        {
            HeadDim = r.OptInt("head_dim") ?? 256,
            SlidingWindow = r.OptInt("sliding_window", 4096),
            LayerTypes = r.LayerTypes(c.NumLayers, i => (i + 1) % 2 == 1),
        };
    }) with
    {
        WriteConfig = (c, json) => LlamaFamily.WriteDecoderConfig(c, json, activationKey: "hidden_activation"),
        Create = c => new Gemma2ForCausalLm(c),
        Ia3Targets = ["q_proj", "v_proj", "down_proj"],
    };

    /// <summary>Gemma 2's own config fields, read from config.json with Gemma2Config's defaults (an explicit null turns a soft-cap off).</summary>
    internal sealed record Options(double QueryPreAttnScalar, double? AttnLogitSoftcapping, double? FinalLogitSoftcapping)
    {
        public static Options Of(ModelConfig c)
        {
            var r = new ConfigReader(c.Raw, "config.json", c.ModelType);
            return new(r.OptDouble("query_pre_attn_scalar", 256) ?? 256, r.OptDouble("attn_logit_softcapping", 50), r.OptDouble("final_logit_softcapping", 30));
        }
    }
}

/// <summary><c>model</c> (<see cref="Gemma2Model"/>) and the tied embedding (or an untied <c>lm_head</c>), then the final soft-cap.</summary>
internal sealed class Gemma2ForCausalLm : CausalLm
{
    private readonly ModelConfig _config;
    private readonly double? _finalSoftcap;
    internal Gemma2Model model;
    internal nn.Module<Tensor, Tensor>? lm_head;

    public Gemma2ForCausalLm(ModelConfig config) : base("Gemma2ForCausalLM")
    {
        _config = config;
        _finalSoftcap = Gemma2Family.Options.Of(config).FinalLogitSoftcapping;
        model = new Gemma2Model(config);
        lm_head = config.TieWordEmbeddings ? null : new Linear(config.HiddenSize, config.VocabSize, hasBias: false);
        RegisterComponents();
    }

    public override ModelConfig Config => _config;

    public override Tensor Embed(Tensor inputIds) => model.embed_tokens.forward(inputIds);

    /// <summary>inputsEmbeds: (batch, seq, hidden) → hidden states (batch, seq, hidden).</summary>
    internal override Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null) =>
        model.forward(inputsEmbeds, attentionMask, positionIds, cache);

    /// <summary>lm_head or the tied embedding matrix → float32 logits, soft-capped: cap · tanh(logits / cap).</summary>
    internal override Tensor LmHead(Tensor hiddenStates)
    {
        var logits = lm_head is null ? Logits(hiddenStates, EmbeddingWeight.Of(model.embed_tokens)) : lm_head.forward(hiddenStates).As(Precision.Compute);
        return _finalSoftcap is double cap ? (logits / cap).tanh() * cap : logits;
    }
}

/// <summary>embed_tokens (scaled by √hidden), layers, norm, and the rotary frequencies.</summary>
internal sealed class Gemma2Model : nn.Module
{
    internal nn.Module<Tensor, Tensor> embed_tokens; // an Embedding, or a LoRA wrapper of it
    internal ModuleList<Gemma2DecoderLayer> layers;
    internal RmsNorm norm;
    private readonly int _hidden;
    private readonly RotaryFrequencies _rotary;

    public Gemma2Model(ModelConfig c) : base("Gemma2Model")
    {
        embed_tokens = new Embedding(c.VocabSize, c.HiddenSize);
        layers = new ModuleList<Gemma2DecoderLayer>([.. Enumerable.Range(0, c.NumLayers).Select(_ => new Gemma2DecoderLayer(c))]);
        norm = new RmsNorm(c.HiddenSize, c.NormEpsilon, unitOffset: true);
        _hidden = c.HiddenSize;
        _rotary = new RotaryFrequencies(c);
        RegisterComponents();
    }

    /// <summary>inputIds: (batch, seq) → hidden states (batch, seq, hidden) float32.</summary>
    /// <summary>inputsEmbeds: (batch, seq, hidden), scaled by √hidden here as transformers does (virtual tokens too) → hidden states.</summary>
    public Tensor forward(Tensor inputsEmbeds, Tensor? attentionMask, Tensor? positionIds, KvCache? cache)
    {
        var (masks, cos, sin) = _rotary.Prepare(inputsEmbeds, attentionMask, positionIds, cache?.Length ?? 0);
        var embedded = inputsEmbeds; // (batch, seq, hidden)
        // transformers multiplies by √hidden as a tensor of the embedding's dtype (rounded in bfloat16).
        using var normalizer = tensor(Math.Sqrt(_hidden), dtype: embedded.dtype).As(Precision.Compute);
        var x = embedded.As(Precision.Compute) * normalizer;
        for (int i = 0; i < layers.Count; i++) x = layers[i].forward(x, masks.For(i), cos, sin, cache, i);
        return norm.forward(x);
    }
}

/// <summary>Sandwich norms: x + post_attention_layernorm(self_attn(input_layernorm(x))), then x + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x))).</summary>
internal sealed class Gemma2DecoderLayer : GradientCheckpointingLayer
{
    internal RmsNorm input_layernorm;
    internal Gemma2Attention self_attn;
    internal RmsNorm post_attention_layernorm;
    internal RmsNorm pre_feedforward_layernorm;
    internal LlamaMlp mlp;
    internal RmsNorm post_feedforward_layernorm;

    public Gemma2DecoderLayer(ModelConfig c) : base("Gemma2DecoderLayer")
    {
        input_layernorm = new RmsNorm(c.HiddenSize, c.NormEpsilon, unitOffset: true);
        self_attn = new Gemma2Attention(c);
        post_attention_layernorm = new RmsNorm(c.HiddenSize, c.NormEpsilon, unitOffset: true);
        pre_feedforward_layernorm = new RmsNorm(c.HiddenSize, c.NormEpsilon, unitOffset: true);
        mlp = new LlamaMlp(c);
        post_feedforward_layernorm = new RmsNorm(c.HiddenSize, c.NormEpsilon, unitOffset: true);
        RegisterComponents();
    }

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden).</summary>
    public Tensor forward(Tensor x, Tensor bias, Tensor cos, Tensor sin, KvCache? cache, int layer) => Checkpointed(x, cache, x =>
    {
        x = x + post_attention_layernorm.forward(self_attn.forward(input_layernorm.forward(x), bias, cos, sin, cache, layer));
        return x + post_feedforward_layernorm.forward(mlp.forward(pre_feedforward_layernorm.forward(x)));
    });
}

/// <summary>q_proj, k_proj, v_proj, o_proj; eager attention with scale query_pre_attn_scalar^-½ and soft-capped scores.</summary>
internal sealed class Gemma2Attention : RotaryAttention
{
    internal nn.Module<Tensor, Tensor> q_proj;
    internal nn.Module<Tensor, Tensor> k_proj;
    internal nn.Module<Tensor, Tensor> v_proj;
    internal nn.Module<Tensor, Tensor> o_proj;
    private readonly double _scale;
    private readonly double? _softcap;

    public Gemma2Attention(ModelConfig c) : base("Gemma2Attention", c)
    {
        q_proj = new Linear(c.HiddenSize, Heads * HeadDim, c.AttentionBias);
        k_proj = new Linear(c.HiddenSize, KvHeads * HeadDim, c.AttentionBias);
        v_proj = new Linear(c.HiddenSize, KvHeads * HeadDim, c.AttentionBias);
        o_proj = new Linear(Heads * HeadDim, c.HiddenSize, c.AttentionBias);
        var options = Gemma2Family.Options.Of(c);
        _scale = Math.Pow(options.QueryPreAttnScalar, -0.5);
        _softcap = options.AttnLogitSoftcapping;
        RegisterComponents();
    }

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden).</summary>
    public override Tensor forward(Tensor x, Tensor bias, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        var q = Attention.SplitHeads(q_proj.forward(x), Heads, HeadDim);   // (batch, heads, seq, head_dim)
        var k = Attention.SplitHeads(k_proj.forward(x), KvHeads, HeadDim); // (batch, kv_heads, seq, head_dim)
        var v = Attention.SplitHeads(v_proj.forward(x), KvHeads, HeadDim); // (batch, kv_heads, seq, head_dim)
        return o_proj.forward(Attend(q, k, v, bias, cos, sin, cache, layer, _scale, _softcap));
    }
}
