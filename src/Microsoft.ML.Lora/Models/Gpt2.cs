using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using LayerNorm = Microsoft.ML.Lora.Models.Layers.LayerNorm;
using static TorchSharp.torch;
using Embedding = Microsoft.ML.Lora.Models.Layers.Embedding;

namespace Microsoft.ML.Lora.Models;

#pragma warning disable IDE1006 // field names are Hugging Face's parameter names

/// <summary>GPT-2's description: GPT2Config's key names (n_embd, n_layer, n_head, n_inner, n_positions) and defaults.</summary>
internal static class Gpt2Family
{
    public static readonly Architecture Gpt2 = new()
    {
        ModelType = "gpt2",
        ClassName = "GPT2LMHeadModel",
        ReadConfig = r =>
        {
            int hidden = r.Int("n_embd", "hidden_size"), heads = r.Int("num_attention_heads", "n_head");
            return new ModelConfig
            {
                ModelType = r.ModelType,
                VocabSize = r.Int("vocab_size"),
                HiddenSize = hidden,
                NumLayers = r.Int("num_hidden_layers", "n_layer"),
                NumHeads = heads,
                NumKeyValueHeads = heads,
                HeadDim = hidden / heads,
                IntermediateSize = r.OptInt("n_inner") ?? 4 * hidden,
                MaxPositionEmbeddings = r.OptInt("n_positions") ?? r.OptInt("max_position_embeddings") ?? 1024,
                NormEpsilon = r.Double(1e-5, "layer_norm_epsilon"),
                HiddenAct = r.String("gelu_new", "activation_function"),
                TieWordEmbeddings = r.Bool("tie_word_embeddings", true),
                BosTokenId = r.OptInt("bos_token_id"),
                EosTokenId = r.OptInt("eos_token_id"),
                PadTokenId = r.OptInt("pad_token_id"),
                Raw = r.Json,
            };
        },
        WriteConfig = (c, json) =>
        {
            json["n_embd"] = c.HiddenSize; json["n_layer"] = c.NumLayers; json["n_head"] = c.NumHeads;
            json["n_inner"] = c.IntermediateSize; json["n_positions"] = c.MaxPositionEmbeddings;
            json["layer_norm_epsilon"] = c.NormEpsilon; json["activation_function"] = c.HiddenAct;
        },
        Create = c => new Gpt2ForCausalLm(c),
        LayersPath = "transformer.h",
        BlockLinears = c =>
        {
            long h = c.HiddenSize, i = c.IntermediateSize;
            return [("attn.c_attn", h, 3 * h), ("attn.c_proj", h, h), ("mlp.c_fc", h, i), ("mlp.c_proj", i, h)];
        },
        LoraTargets = ["c_attn"],
        Ia3Targets = ["c_attn", "mlp.c_proj"],
        Ia3FeedforwardModules = ["mlp.c_proj"],
        Positions = PositionRule.Learned,
        TinyConfig = (json, size) =>
        {
            json["n_embd"] = size.Hidden; json["n_layer"] = size.Layers; json["n_head"] = size.Heads; json["n_positions"] = 512;
            json["activation_function"] = "gelu_new"; json["layer_norm_epsilon"] = 1e-5;
        },
    };
}

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

    public override Tensor Embed(Tensor inputIds) => transformer.wte.forward(inputIds);

    internal override int? PositionLimit => _config.MaxPositionEmbeddings;

    /// <summary>inputsEmbeds: (batch, seq, hidden) → hidden states (batch, seq, hidden).</summary>
    internal override Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null) =>
        transformer.forward(inputsEmbeds, attentionMask, positionIds, cache);

    /// <summary>The tied head: hidden states through wte.</summary>
    internal override Tensor LmHead(Tensor hiddenStates) => Logits(hiddenStates, EmbeddingWeight.Of(transformer.wte));
}

/// <summary>GPT-2's body: wte, wpe, h, ln_f.</summary>
internal sealed class Gpt2Model : nn.Module
{
    internal nn.Module<Tensor, Tensor> wte; // an Embedding, or a LoRA wrapper of it
    internal Embedding wpe;
    internal ModuleList<Gpt2Block> h;
    internal LayerNorm ln_f;

    public Gpt2Model(ModelConfig c) : base("GPT2Model")
    {
        wte = new Embedding(c.VocabSize, c.HiddenSize);
        wpe = new Embedding(c.MaxPositionEmbeddings, c.HiddenSize);
        h = new ModuleList<Gpt2Block>([.. Enumerable.Range(0, c.NumLayers).Select(_ => new Gpt2Block(c))]);
        ln_f = new LayerNorm(c.HiddenSize, c.NormEpsilon);
        RegisterComponents();
    }

    /// <summary>inputsEmbeds: (batch, seq, hidden) plus the position embeddings → hidden states (batch, seq, hidden) float32.</summary>
    public Tensor forward(Tensor inputsEmbeds, Tensor? attentionMask, Tensor? positionIds, KvCache? cache)
    {
        long time = inputsEmbeds.shape[1], past = cache?.Length ?? 0;
        var mask = Attention.FullMask(inputsEmbeds, attentionMask, past);                // (batch, past + seq)
        positionIds ??= Attention.PositionsFromMask(mask, time);                         // (batch, seq)
        InputBounds.Check(positionIds, wpe.weight.shape[0], "position_ids",
            $"GPT-2 has learned positions for {wpe.weight.shape[0]} tokens (n_positions in config.json); shorten the input");
        var x = inputsEmbeds.As(Precision.Compute) + wpe.forward(positionIds);           // (batch, seq, hidden)
        var bias = Attention.CausalMask(mask, time, x.dtype);                            // (batch, 1, seq, past + seq)
        for (int i = 0; i < h.Count; i++) x = h[i].forward(x, bias, cache, i);
        return ln_f.forward(x);
    }
}

/// <summary>x + attn(ln_1(x)), then x + mlp(ln_2(x)).</summary>
internal sealed class Gpt2Block : GradientCheckpointingLayer
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

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden).</summary>
    public Tensor forward(Tensor x, Tensor mask, KvCache? cache, int layer) => Checkpointed(x, cache, x =>
    {
        x = x + attn.forward(ln_1.forward(x), mask, cache, layer);
        return x + mlp.forward(ln_2.forward(x));
    });
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

    /// <summary>x: (batch, seq, hidden), mask: (batch, 1, seq, past + seq) → (batch, seq, hidden).</summary>
    public Tensor forward(Tensor x, Tensor mask, KvCache? cache, int layer)
    {
        var qkv = c_attn.forward(x).split(_hidden, -1);           // 3 × (batch, seq, hidden)
        var q = Attention.SplitHeads(qkv[0], _heads, _headDim);   // (batch, heads, seq, head_dim)
        var k = Attention.SplitHeads(qkv[1], _heads, _headDim);
        var v = Attention.SplitHeads(qkv[2], _heads, _headDim);
        if (cache is not null) (k, v) = cache.Update(layer, k, v); // (batch, heads, past + seq, head_dim)
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

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden) through (batch, seq, n_inner).</summary>
    public Tensor forward(Tensor x) => c_proj.forward(Activations.Apply(_act, c_fc.forward(x)));
}
