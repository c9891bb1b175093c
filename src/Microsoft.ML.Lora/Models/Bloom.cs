using Microsoft.ML.Lora.Generation;
using TorchSharp;
using TorchSharp.Modules;
using LayerNorm = Microsoft.ML.Lora.Models.Layers.LayerNorm;
using static TorchSharp.torch;
using Embedding = Microsoft.ML.Lora.Models.Layers.Embedding;
using Microsoft.ML.Lora.Models.Layers;
using Linear = Microsoft.ML.Lora.Models.Layers.Linear;

namespace Microsoft.ML.Lora.Models;

#pragma warning disable IDE1006 // field names are Hugging Face's parameter names

/// <summary>BLOOM's description: BloomConfig's key names (n_layer, n_head, hidden_size or n_embed) and defaults; 4 × hidden MLP, no position limit.</summary>
internal static class BloomFamily
{
    public static readonly Architecture Bloom = new()
    {
        ModelType = "bloom",
        ClassName = "BloomForCausalLM",
        ReadConfig = r =>
        {
            int hidden = r.Int("hidden_size", "n_embed"), heads = r.Int("num_attention_heads", "n_head");
            return new ModelConfig
            {
                ModelType = r.ModelType,
                VocabSize = r.Int("vocab_size"),
                HiddenSize = hidden,
                NumLayers = r.Int("num_hidden_layers", "n_layer"),
                NumHeads = heads,
                NumKeyValueHeads = heads,
                HeadDim = hidden / heads,
                IntermediateSize = 4 * hidden,
                NormEpsilon = r.Double(1e-5, "layer_norm_epsilon"),
                HiddenAct = "gelu_pytorch_tanh",
                TieWordEmbeddings = r.Bool("tie_word_embeddings", true),
                BosTokenId = r.OptInt("bos_token_id"),
                EosTokenId = r.OptInt("eos_token_id"),
                PadTokenId = r.OptInt("pad_token_id"),
                Raw = r.Json,
            };
        },
        WriteConfig = (c, json) =>
        {
            json["hidden_size"] = c.HiddenSize; json["n_layer"] = c.NumLayers; json["n_head"] = c.NumHeads;
            json["layer_norm_epsilon"] = c.NormEpsilon;
        },
        Create = c => new BloomForCausalLm(c),
        LayersPath = "transformer.h",
        BlockLinears = c =>
        {
            long h = c.HiddenSize, i = c.IntermediateSize;
            return [("self_attention.query_key_value", h, 3 * h), ("self_attention.dense", h, h), ("mlp.dense_h_to_4h", h, i), ("mlp.dense_4h_to_h", i, h)];
        },
        LoraTargets = ["query_key_value"],
        Ia3Targets = ["query_key_value", "mlp.dense_4h_to_h"],
        Ia3FeedforwardModules = ["mlp.dense_4h_to_h"],
        Positions = PositionRule.Alibi,
        TinyConfig = (json, size) =>
        {
            json["hidden_size"] = size.Hidden; json["n_layer"] = size.Layers; json["n_head"] = size.Heads; json["layer_norm_epsilon"] = 1e-5;
        },
    };
}

/// <summary>BLOOM (transformers' BloomForCausalLM): ALiBi, embedding layer norm, per-head fused q/k/v, tied lm_head.</summary>
internal sealed class BloomForCausalLm : CausalLm
{
    private readonly ModelConfig _config;
    internal BloomModel transformer;

    public BloomForCausalLm(ModelConfig config) : base("BloomForCausalLM")
    {
        _config = config;
        transformer = new BloomModel(config);
        RegisterComponents();
    }

    public override ModelConfig Config => _config;

    public override Tensor Embed(Tensor inputIds) => transformer.word_embeddings.forward(inputIds);

    /// <summary>BLOOM has no position embeddings: <paramref name="positionIds"/> is ignored; ALiBi follows the mask.</summary>
    /// <remarks>inputsEmbeds: (batch, seq, hidden) → hidden states (batch, seq, hidden) float32.</remarks>
    internal override Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null) =>
        transformer.forward(inputsEmbeds, attentionMask, cache);

    /// <summary>The tied head: hidden states through the word embedding matrix.</summary>
    internal override Tensor LmHead(Tensor hiddenStates) => Logits(hiddenStates, EmbeddingWeight.Of(transformer.word_embeddings));

    /// <summary>ALiBi slopes of transformers' build_alibi_tensor, also for head counts that are not powers of two.</summary>
    public static float[] AlibiSlopes(int heads)
    {
        int closest = 1 << (int)Math.Floor(Math.Log2(heads));
        double baseValue = Math.Pow(2, -Math.Pow(2, -(Math.Log2(closest) - 3)));
        var slopes = Enumerable.Range(1, closest).Select(i => (float)Math.Pow(baseValue, i)).ToList();
        if (closest != heads)
        {
            double extraBase = Math.Pow(2, -Math.Pow(2, -(Math.Log2(2 * closest) - 3)));
            int remaining = Math.Min(closest, heads - closest);
            slopes.AddRange(Enumerable.Range(0, remaining).Select(i => (float)Math.Pow(extraBase, 1 + 2 * i)));
        }
        return [.. slopes];
    }

    /// <summary>alibi [batch, heads, 1, keys] = slope * ((cumsum(mask) - 1) * mask), as transformers builds it (float32).</summary>
    public static Tensor BuildAlibi(Tensor mask, int heads)
    {
        var slopes = tensor(AlibiSlopes(heads), device: mask.device);
        var arangeTensor = ((mask.cumsum(-1) - 1) * mask).to_type(ScalarType.Float32).unsqueeze(1); // [B, 1, S]
        return (slopes.view(1, heads, 1) * arangeTensor).unsqueeze(2);
    }
}

/// <summary>BLOOM's body: word_embeddings, word_embeddings_layernorm, h, ln_f.</summary>
internal sealed class BloomModel : nn.Module
{
    internal nn.Module<Tensor, Tensor> word_embeddings; // an Embedding, or a LoRA wrapper of it
    internal LayerNorm word_embeddings_layernorm;
    internal ModuleList<BloomBlock> h;
    internal LayerNorm ln_f;
    private readonly int _heads;

    public BloomModel(ModelConfig c) : base("BloomModel")
    {
        _heads = c.NumHeads;
        word_embeddings = new Embedding(c.VocabSize, c.HiddenSize);
        word_embeddings_layernorm = new LayerNorm(c.HiddenSize, c.NormEpsilon);
        h = new ModuleList<BloomBlock>([.. Enumerable.Range(0, c.NumLayers).Select(_ => new BloomBlock(c))]);
        ln_f = new LayerNorm(c.HiddenSize, c.NormEpsilon);
        RegisterComponents();
    }

    /// <summary>inputsEmbeds: (batch, seq, hidden), layer-normed here as transformers does → hidden states (batch, seq, hidden) float32.</summary>
    public Tensor forward(Tensor inputsEmbeds, Tensor? attentionMask, KvCache? cache)
    {
        long time = inputsEmbeds.shape[1], past = cache?.Length ?? 0;
        var mask = Attention.FullMask(inputsEmbeds, attentionMask, past);                               // (batch, past + seq)
        var x = word_embeddings_layernorm.forward(inputsEmbeds);                                         // (batch, seq, hidden)
        var bias = BloomForCausalLm.BuildAlibi(mask, _heads) + Attention.CausalMask(mask, time, x.dtype); // (batch, heads, seq, past + seq)
        for (int i = 0; i < h.Count; i++) x = h[i].forward(x, bias, cache, i);
        return ln_f.forward(x);
    }
}

/// <summary>x + attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x)).</summary>
internal sealed class BloomBlock : GradientCheckpointingLayer
{
    internal LayerNorm input_layernorm;
    internal BloomAttention self_attention;
    internal LayerNorm post_attention_layernorm;
    internal BloomMlp mlp;
    private readonly bool _residualPostNorm;

    public BloomBlock(ModelConfig c) : base("BloomBlock")
    {
        input_layernorm = new LayerNorm(c.HiddenSize, c.NormEpsilon);
        self_attention = new BloomAttention(c);
        post_attention_layernorm = new LayerNorm(c.HiddenSize, c.NormEpsilon);
        mlp = new BloomMlp(c);
        _residualPostNorm = c.Raw["apply_residual_connection_post_layernorm"]?.GetValue<bool>() ?? false;
        RegisterComponents();
    }

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden).</summary>
    public Tensor forward(Tensor x, Tensor bias, KvCache? cache, int layer) => Checkpointed(x, cache, x =>
    {
        var normed = input_layernorm.forward(x);
        var attended = self_attention.forward(normed, bias, cache, layer) + (_residualPostNorm ? normed : x);
        normed = post_attention_layernorm.forward(attended);
        return mlp.forward(normed) + (_residualPostNorm ? normed : attended);
    });
}

/// <summary>query_key_value laid out per head ([B, T, H, 3, D]) and dense.</summary>
internal sealed class BloomAttention : nn.Module
{
    internal nn.Module<Tensor, Tensor> query_key_value;
    internal nn.Module<Tensor, Tensor> dense;
    private readonly long _heads, _headDim;

    public BloomAttention(ModelConfig c) : base("BloomAttention")
    {
        _heads = c.NumHeads;
        _headDim = c.HiddenSize / c.NumHeads;
        query_key_value = new Linear(c.HiddenSize, 3L * c.HiddenSize);
        dense = new Linear(c.HiddenSize, c.HiddenSize);
        RegisterComponents();
    }

    /// <summary>x: (batch, seq, hidden), bias: (batch, heads, seq, past + seq) → (batch, seq, hidden).</summary>
    public Tensor forward(Tensor x, Tensor bias, KvCache? cache, int layer)
    {
        var fused = query_key_value.forward(x).view(x.shape[0], x.shape[1], _heads, 3, _headDim); // (batch, seq, heads, 3, head_dim)
        var q = fused.select(3, 0).transpose(1, 2);                                               // (batch, heads, seq, head_dim)
        var k = fused.select(3, 1).transpose(1, 2);
        var v = fused.select(3, 2).transpose(1, 2);
        if (cache is not null) (k, v) = cache.Update(layer, k, v);                                // (batch, heads, past + seq, head_dim)
        return dense.forward(Attention.MergeHeads(Attention.Sdpa(q, k, v, bias)));
    }
}

/// <summary>dense_4h_to_h(gelu_tanh(dense_h_to_4h(x))).</summary>
internal sealed class BloomMlp : nn.Module
{
    internal nn.Module<Tensor, Tensor> dense_h_to_4h;
    internal nn.Module<Tensor, Tensor> dense_4h_to_h;

    public BloomMlp(ModelConfig c) : base("BloomMLP")
    {
        dense_h_to_4h = new Linear(c.HiddenSize, c.IntermediateSize);
        dense_4h_to_h = new Linear(c.IntermediateSize, c.HiddenSize);
        RegisterComponents();
    }

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden) through (batch, seq, 4 × hidden).</summary>
    public Tensor forward(Tensor x) => dense_4h_to_h.forward(Activations.GeluTanh(dense_h_to_4h.forward(x)));
}
