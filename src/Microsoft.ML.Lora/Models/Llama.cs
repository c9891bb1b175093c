using Microsoft.ML.Lora.Generation;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Microsoft.ML.Lora.Models.Layers;
using Linear = Microsoft.ML.Lora.Models.Layers.Linear;

namespace Microsoft.ML.Lora.Models;

#pragma warning disable IDE1006 // field names are Hugging Face's parameter names

/// <summary>
/// The LLaMA family (transformers' LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM): RMSNorm, rotary positions
/// (rope_theta; rope_scaling "linear", "dynamic", "yarn" and "llama3"), grouped-query attention, SwiGLU MLP, tied or untied lm_head.
/// Qwen2 adds biases on q/k/v; Mistral a sliding window.
/// </summary>
internal sealed class LlamaForCausalLm : CausalLm
{
    private readonly ModelConfig _config;
    internal LlamaModel model;
    internal nn.Module<Tensor, Tensor>? lm_head;

    public LlamaForCausalLm(ModelConfig config) : base(config.ModelType switch
    {
        "qwen2" => "Qwen2ForCausalLM",
        "mistral" => "MistralForCausalLM",
        _ => "LlamaForCausalLM",
    })
    {
        _config = config;
        model = new LlamaModel(config);
        lm_head = config.TieWordEmbeddings ? null : new Linear(config.HiddenSize, config.VocabSize, hasBias: false);
        RegisterComponents();
    }

    public override ModelConfig Config => _config;

    public override Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null)
    {
        var h = model.forward(inputIds, attentionMask, positionIds, cache);
        return lm_head is null ? Logits(h, model.embed_tokens.weight!) : lm_head.forward(h).As(Precision.Compute);
    }
}

/// <summary>embed_tokens, layers, norm, and the rotary frequencies.</summary>
internal sealed class LlamaModel : nn.Module
{
    internal Embedding embed_tokens;
    internal ModuleList<LlamaDecoderLayer> layers;
    internal RmsNorm norm;
    private readonly ModelConfig _config;
    private readonly float[] _originalInvFreq;
    private readonly double _attentionScaling;
    private float[] _invFreq;
    private long _maxSeqLenCached;
    private readonly bool _dynamic;
    private readonly int? _slidingWindow;

    public LlamaModel(ModelConfig c) : base("LlamaModel")
    {
        embed_tokens = nn.Embedding(c.VocabSize, c.HiddenSize);
        layers = new ModuleList<LlamaDecoderLayer>([.. Enumerable.Range(0, c.NumLayers).Select(_ => new LlamaDecoderLayer(c))]);
        norm = new RmsNorm(c.HiddenSize, c.NormEpsilon);
        _config = c;
        (_invFreq, _attentionScaling) = Rotary.Parameters(c);
        _originalInvFreq = _invFreq;
        _maxSeqLenCached = c.MaxPositionEmbeddings;
        _dynamic = Rotary.RopeType(c) == "dynamic";
        _slidingWindow = c.SlidingWindow;
        RegisterComponents();
    }

    public Tensor forward(Tensor inputIds, Tensor? attentionMask, Tensor? positionIds, KvCache? cache)
    {
        long time = inputIds.shape[1], past = cache?.Length ?? 0;
        var mask = Attention.FullMask(inputIds, attentionMask, past);
        positionIds ??= Attention.PositionsFromMask(mask, time);
        var x = embed_tokens.forward(inputIds).As(Precision.Compute);
        var bias = Attention.CausalMask(mask, time, x.dtype, _slidingWindow);
        if (_dynamic) UpdateDynamicFrequencies(positionIds);
        var (cos, sin) = Rotary.CosSin(_invFreq, positionIds, _attentionScaling);
        for (int i = 0; i < layers.Count; i++) x = layers[i].forward(x, bias, cos, sin, cache, i);
        return norm.forward(x);
    }

    /// <summary>
    /// transformers' dynamic_rope_update: the frequencies grow with the longest sequence seen (and stay grown for shorter
    /// ones), and go back to the original ones once a sequence is shorter than max_position_embeddings.
    /// </summary>
    private void UpdateDynamicFrequencies(Tensor positionIds)
    {
        using var maxPosition = positionIds.max();
        long seqLen = maxPosition.ToInt64() + 1, original = _config.MaxPositionEmbeddings;
        if (seqLen > _maxSeqLenCached)
        {
            _invFreq = Rotary.InverseFrequencies(_config, seqLen);
            _maxSeqLenCached = seqLen;
        }
        if (seqLen < original && _maxSeqLenCached > original)
        {
            _invFreq = _originalInvFreq;
            _maxSeqLenCached = original;
        }
    }
}

/// <summary>weight * x / sqrt(mean(x²) + eps), computed and returned in float32 (transformers' LlamaRMSNorm upcasts too).</summary>
internal sealed class RmsNorm : nn.Module<Tensor, Tensor>
{
    public Parameter weight;
    private readonly double _eps;

    public RmsNorm(long size, double eps) : base("RMSNorm")
    {
        weight = new Parameter(ones(size));
        _eps = eps;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var h = x.As(Precision.Compute);
        return weight.As(Precision.Compute) * (h * rsqrt(h.pow(2).mean([-1], keepdim: true) + _eps));
    }
}

/// <summary>x + self_attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x)).</summary>
internal sealed class LlamaDecoderLayer : nn.Module
{
    internal RmsNorm input_layernorm;
    internal LlamaAttention self_attn;
    internal RmsNorm post_attention_layernorm;
    internal LlamaMlp mlp;

    public LlamaDecoderLayer(ModelConfig c) : base("LlamaDecoderLayer")
    {
        input_layernorm = new RmsNorm(c.HiddenSize, c.NormEpsilon);
        self_attn = new LlamaAttention(c);
        post_attention_layernorm = new RmsNorm(c.HiddenSize, c.NormEpsilon);
        mlp = new LlamaMlp(c);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor bias, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        x = x + self_attn.forward(input_layernorm.forward(x), bias, cos, sin, cache, layer);
        return x + mlp.forward(post_attention_layernorm.forward(x));
    }
}

/// <summary>q_proj, k_proj, v_proj (kv heads may be fewer: GQA), o_proj.</summary>
internal sealed class LlamaAttention : nn.Module
{
    internal nn.Module<Tensor, Tensor> q_proj;
    internal nn.Module<Tensor, Tensor> k_proj;
    internal nn.Module<Tensor, Tensor> v_proj;
    internal nn.Module<Tensor, Tensor> o_proj;
    private readonly long _heads, _kvHeads, _headDim;

    public LlamaAttention(ModelConfig c) : base("LlamaAttention")
    {
        _heads = c.NumHeads;
        _kvHeads = c.NumKeyValueHeads;
        _headDim = c.HeadDim;
        q_proj = new Linear(c.HiddenSize, _heads * _headDim, c.AttentionBias);
        k_proj = new Linear(c.HiddenSize, _kvHeads * _headDim, c.AttentionBias);
        v_proj = new Linear(c.HiddenSize, _kvHeads * _headDim, c.AttentionBias);
        o_proj = new Linear(_heads * _headDim, c.HiddenSize, c.AttentionBias && c.ModelType != "qwen2");
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor bias, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        var q = Rotary.Apply(Attention.SplitHeads(q_proj.forward(x), _heads, _headDim), cos, sin);
        var k = Rotary.Apply(Attention.SplitHeads(k_proj.forward(x), _kvHeads, _headDim), cos, sin);
        var v = Attention.SplitHeads(v_proj.forward(x), _kvHeads, _headDim);
        if (cache is not null) (k, v) = cache.Update(layer, k, v);
        long groups = _heads / _kvHeads;
        var y = Attention.Sdpa(q, Attention.RepeatKv(k, groups), Attention.RepeatKv(v, groups), bias);
        return o_proj.forward(Attention.MergeHeads(y));
    }
}

/// <summary>down_proj(silu(gate_proj(x)) * up_proj(x)).</summary>
internal sealed class LlamaMlp : nn.Module
{
    internal nn.Module<Tensor, Tensor> gate_proj;
    internal nn.Module<Tensor, Tensor> up_proj;
    internal nn.Module<Tensor, Tensor> down_proj;
    private readonly string _act;

    public LlamaMlp(ModelConfig c) : base("LlamaMLP")
    {
        gate_proj = new Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias);
        up_proj = new Linear(c.HiddenSize, c.IntermediateSize, c.MlpBias);
        down_proj = new Linear(c.IntermediateSize, c.HiddenSize, c.MlpBias);
        _act = c.HiddenAct;
        RegisterComponents();
    }

    public Tensor forward(Tensor x) => down_proj.forward(Activations.Apply(_act, gate_proj.forward(x)) * up_proj.forward(x));
}
