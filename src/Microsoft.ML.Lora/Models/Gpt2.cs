using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using LayerNorm = Microsoft.ML.Lora.Models.Layers.LayerNorm;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

#pragma warning disable IDE1006 // field names are Hugging Face's parameter names

/// <summary>GPT-2 (transformers' GPT2LMHeadModel): learned positions, Conv1D projections, gelu_new, tied lm_head.</summary>
internal sealed class Gpt2ForCausalLm : CausalLm
{
    private readonly ModelConfig _config;
    internal Gpt2Model transformer;

    public Gpt2ForCausalLm(ModelConfig config) : base("GPT2LMHeadModel")
    {
        _config = config;
        transformer = new Gpt2Model(config);
        RegisterComponents();
    }

    public override ModelConfig Config => _config;

    public override Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null)
    {
        var h = transformer.forward(inputIds, attentionMask, positionIds, cache);
        return Logits(h, transformer.wte.weight!);
    }
}

/// <summary>GPT-2's body: wte, wpe, h, ln_f.</summary>
internal sealed class Gpt2Model : nn.Module
{
    internal Embedding wte;
    internal Embedding wpe;
    internal ModuleList<Gpt2Block> h;
    internal LayerNorm ln_f;

    public Gpt2Model(ModelConfig c) : base("GPT2Model")
    {
        wte = nn.Embedding(c.VocabSize, c.HiddenSize);
        wpe = nn.Embedding(c.MaxPositionEmbeddings, c.HiddenSize);
        h = new ModuleList<Gpt2Block>([.. Enumerable.Range(0, c.NumLayers).Select(_ => new Gpt2Block(c))]);
        ln_f = new LayerNorm(c.HiddenSize, c.NormEpsilon);
        RegisterComponents();
    }

    public Tensor forward(Tensor inputIds, Tensor? attentionMask, Tensor? positionIds, KvCache? cache)
    {
        long time = inputIds.shape[1], past = cache?.Length ?? 0;
        var mask = Attention.FullMask(inputIds, attentionMask, past);
        positionIds ??= Attention.PositionsFromMask(mask, time);
        var x = wte.forward(inputIds).As(Precision.Compute) + wpe.forward(positionIds);
        var bias = Attention.CausalMask(mask, time, x.dtype);
        for (int i = 0; i < h.Count; i++) x = h[i].forward(x, bias, cache, i);
        return ln_f.forward(x);
    }
}

/// <summary>x + attn(ln_1(x)), then x + mlp(ln_2(x)).</summary>
internal sealed class Gpt2Block : nn.Module
{
    internal LayerNorm ln_1;
    internal Gpt2Attention attn;
    internal LayerNorm ln_2;
    internal Gpt2Mlp mlp;

    public Gpt2Block(ModelConfig c) : base("GPT2Block")
    {
        ln_1 = new LayerNorm(c.HiddenSize, c.NormEpsilon);
        attn = new Gpt2Attention(c);
        ln_2 = new LayerNorm(c.HiddenSize, c.NormEpsilon);
        mlp = new Gpt2Mlp(c);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor mask, KvCache? cache, int layer)
    {
        x = x + attn.forward(ln_1.forward(x), mask, cache, layer);
        return x + mlp.forward(ln_2.forward(x));
    }
}

/// <summary>Fused c_attn (q, k, v concatenated along the output) and c_proj.</summary>
internal sealed class Gpt2Attention : nn.Module
{
    internal nn.Module<Tensor, Tensor> c_attn;
    internal nn.Module<Tensor, Tensor> c_proj;
    private readonly long _heads, _headDim, _hidden;

    public Gpt2Attention(ModelConfig c) : base("GPT2Attention")
    {
        _heads = c.NumHeads;
        _headDim = c.HiddenSize / c.NumHeads;
        _hidden = c.HiddenSize;
        c_attn = new Conv1D(c.HiddenSize, 3L * c.HiddenSize);
        c_proj = new Conv1D(c.HiddenSize, c.HiddenSize);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, Tensor mask, KvCache? cache, int layer)
    {
        var qkv = c_attn.forward(x).split(_hidden, -1);
        var q = Attention.SplitHeads(qkv[0], _heads, _headDim);
        var k = Attention.SplitHeads(qkv[1], _heads, _headDim);
        var v = Attention.SplitHeads(qkv[2], _heads, _headDim);
        if (cache is not null) (k, v) = cache.Update(layer, k, v);
        return c_proj.forward(Attention.MergeHeads(Attention.Sdpa(q, k, v, mask)));
    }
}

/// <summary>c_proj(gelu_new(c_fc(x))).</summary>
internal sealed class Gpt2Mlp : nn.Module
{
    internal nn.Module<Tensor, Tensor> c_fc;
    internal nn.Module<Tensor, Tensor> c_proj;
    private readonly string _act;

    public Gpt2Mlp(ModelConfig c) : base("GPT2MLP")
    {
        c_fc = new Conv1D(c.HiddenSize, c.IntermediateSize);
        c_proj = new Conv1D(c.IntermediateSize, c.HiddenSize);
        _act = c.HiddenAct;
        RegisterComponents();
    }

    public Tensor forward(Tensor x) => c_proj.forward(Activations.Apply(_act, c_fc.forward(x)));
}
