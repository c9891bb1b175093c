using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Generation;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Embedding = Microsoft.ML.Lora.Models.Layers.Embedding;
using Microsoft.ML.Lora.Models.Layers;
using Linear = Microsoft.ML.Lora.Models.Layers.Linear;

namespace Microsoft.ML.Lora.Models;

#pragma warning disable IDE1006 // field names are Hugging Face's parameter names

/// <summary>
/// The LLaMA family (transformers' LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM): RMSNorm, rotary positions
/// (rope_theta; rope_scaling "linear", "dynamic", "yarn", "llama3" and "longrope"), grouped-query attention, SwiGLU
/// MLP, tied or untied lm_head. Qwen2 adds biases on q/k/v and slides from max_window_layers on; Mistral slides
/// everywhere. Its skeleton (<see cref="LlamaForCausalLm"/> with <see cref="LlamaParts"/>) also carries Qwen3 and Phi-3.
/// </summary>
internal static class LlamaFamily
{
    public static readonly Architecture Llama = Describe("llama", "LlamaForCausalLM", LlamaParts.Llama,
        r => r.Decoder(new DecoderDefaults { MaxPositionEmbeddings = 2048 }));

    public static readonly Architecture Mistral = Describe("mistral", "MistralForCausalLM", LlamaParts.Llama,
        // MistralConfig: sliding_window 4096 unless config.json sets it (null turns it off); every layer slides.
        r => r.Decoder(new DecoderDefaults { MaxPositionEmbeddings = 4096 * 32 }) with { SlidingWindow = r.OptInt("sliding_window", 4096) });

    public static readonly Architecture Qwen2 = Describe("qwen2", "Qwen2ForCausalLM", LlamaParts.Qwen2,
        r => QwenSlidingRule(r, r.Decoder(new DecoderDefaults { MaxPositionEmbeddings = 32768 }) with { AttentionBias = true })) with
    {
        Ia3Targets = ["q_proj", "v_proj", "down_proj"],
    };

    /// <summary>A family description with the LLaMA skeleton, its key names and PEFT's LLaMA defaults (override with <c>with</c>).</summary>
    public static Architecture Describe(string modelType, string className, LlamaParts parts, Func<ConfigReader, ModelConfig> readConfig) => new()
    {
        ModelType = modelType,
        ClassName = className,
        ReadConfig = readConfig,
        WriteConfig = (c, json) => WriteDecoderConfig(c, json),
        Create = c => new LlamaForCausalLm(c, className, parts),
        LayersPath = "model.layers",
        BlockLinears = BlockLinears,
        LoraTargets = ["q_proj", "v_proj"],
        Ia3Targets = ["k_proj", "v_proj", "down_proj"],
        Ia3FeedforwardModules = ["down_proj"],
        Positions = PositionRule.Rotary,
        TinyConfig = TinyDecoderConfig,
    };

    /// <summary>
    /// Qwen2/Qwen3's rule: sliding_window only with use_sliding_window; layers listed in layer_types, else the layers
    /// from max_window_layers (default 28) on slide (transformers 4.57's Qwen2Config / Qwen3Config).
    /// </summary>
    public static ModelConfig QwenSlidingRule(ConfigReader r, ModelConfig c)
    {
        int? window = r.Bool("use_sliding_window", false) ? r.OptInt("sliding_window", 4096) : null;
        int maxWindowLayers = r.OptInt("max_window_layers") ?? 28;
        var types = r.LayerTypes(c.NumLayers, i => window is not null && i >= maxWindowLayers);
        // transformers refuses a sliding layer without a window (create_sliding_window_causal_mask needs one).
        if (window is null && types.Contains(ModelConfig.SlidingAttention))
            throw r.Error("has sliding_attention in layer_types but no window (use_sliding_window is not true or sliding_window is null)");
        return c with { SlidingWindow = window, LayerTypes = types };
    }

    /// <summary>q/k/v/o and gate/up/down of one block.</summary>
    public static IReadOnlyList<(string Path, long In, long Out)> BlockLinears(ModelConfig c)
    {
        long h = c.HiddenSize, i = c.IntermediateSize, q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim;
        return [("self_attn.q_proj", h, q), ("self_attn.k_proj", h, kv), ("self_attn.v_proj", h, kv), ("self_attn.o_proj", q, h),
            ("mlp.gate_proj", h, i), ("mlp.up_proj", h, i), ("mlp.down_proj", i, h)];
    }

    /// <summary>The mapped fields under transformers' standard decoder key names.</summary>
    public static void WriteDecoderConfig(ModelConfig c, JsonObject json, string activationKey = "hidden_act")
    {
        json["hidden_size"] = c.HiddenSize; json["num_hidden_layers"] = c.NumLayers; json["num_attention_heads"] = c.NumHeads;
        json["num_key_value_heads"] = c.NumKeyValueHeads; json["head_dim"] = c.HeadDim; json["intermediate_size"] = c.IntermediateSize;
        json["max_position_embeddings"] = c.MaxPositionEmbeddings; json["rms_norm_eps"] = c.NormEpsilon;
        json[activationKey] = c.HiddenAct; json["rope_theta"] = c.RopeTheta;
        json["rope_scaling"] = c.RopeScaling?.DeepClone();
        json["attention_bias"] = c.AttentionBias; json["mlp_bias"] = c.MlpBias;
        if (c.SlidingWindow is int w) { json["sliding_window"] = w; json["use_sliding_window"] = true; }
        if (c.LayerTypes.Count > 0) json["layer_types"] = new JsonArray([.. c.LayerTypes.Select(t => (JsonNode)JsonValue.Create(t))]);
        if (c.PartialRotaryFactor != 1) json["partial_rotary_factor"] = c.PartialRotaryFactor;
        if (c.OriginalMaxPositionEmbeddings is int o) json["original_max_position_embeddings"] = o;
    }

    /// <summary>A tiny decoder's keys: 4 × hidden MLP, as many key/value heads as heads, 512 positions.</summary>
    public static void TinyDecoderConfig(JsonObject json, (int Hidden, int Layers, int Heads) size)
    {
        json["hidden_size"] = size.Hidden; json["num_hidden_layers"] = size.Layers; json["num_attention_heads"] = size.Heads;
        json["num_key_value_heads"] = size.Heads; json["intermediate_size"] = 4 * size.Hidden; json["max_position_embeddings"] = 512;
        json["rms_norm_eps"] = 1e-5; json["tie_word_embeddings"] = true;
    }
}

/// <summary>What a LLaMA-like family puts in each block: its attention and its MLP.</summary>
internal sealed record LlamaParts(Func<ModelConfig, RotaryAttention> Attention, Func<ModelConfig, nn.Module<Tensor, Tensor>> Mlp)
{
    /// <summary>LLaMA and Mistral: q/k/v/o with attention_bias, SwiGLU.</summary>
    public static readonly LlamaParts Llama = new(c => new LlamaAttention(c), c => new LlamaMlp(c));

    /// <summary>Qwen2: biases on q/k/v, never on o_proj.</summary>
    public static readonly LlamaParts Qwen2 = new(c => new LlamaAttention(c, outputBias: false), c => new LlamaMlp(c));
}

/// <summary>A LLaMA-like causal LM: <c>model</c> (<see cref="LlamaModel"/>) and an untied <c>lm_head</c> or the tied embedding.</summary>
internal sealed class LlamaForCausalLm : CausalLm
{
    private readonly ModelConfig _config;
    internal LlamaModel model;
    internal nn.Module<Tensor, Tensor>? lm_head;

    public LlamaForCausalLm(ModelConfig config, string className, LlamaParts parts) : base(className)
    {
        _config = config;
        model = new LlamaModel(config, parts);
        lm_head = config.TieWordEmbeddings ? null : new Linear(config.HiddenSize, config.VocabSize, hasBias: false);
        RegisterComponents();
    }

    public override ModelConfig Config => _config;

    public override Tensor Embed(Tensor inputIds) => model.embed_tokens.forward(inputIds);

    /// <summary>inputsEmbeds: (batch, seq, hidden) → hidden states (batch, seq, hidden).</summary>
    internal override Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null) =>
        model.forward(inputsEmbeds, attentionMask, positionIds, cache);

    /// <summary>lm_head, or the tied embedding matrix; float32 logits.</summary>
    internal override Tensor LmHead(Tensor hiddenStates) =>
        lm_head is null ? Logits(hiddenStates, EmbeddingWeight.Of(model.embed_tokens)) : lm_head.forward(hiddenStates).As(Precision.Compute);
}

/// <summary>embed_tokens, layers, norm, and the rotary frequencies.</summary>
internal sealed class LlamaModel : nn.Module
{
    internal nn.Module<Tensor, Tensor> embed_tokens; // an Embedding, or a LoRA wrapper of it
    internal ModuleList<LlamaDecoderLayer> layers;
    internal RmsNorm norm;
    private readonly RotaryFrequencies _rotary;

    public LlamaModel(ModelConfig c, LlamaParts parts) : base("LlamaModel")
    {
        embed_tokens = new Embedding(c.VocabSize, c.HiddenSize);
        layers = new ModuleList<LlamaDecoderLayer>([.. Enumerable.Range(0, c.NumLayers).Select(_ => new LlamaDecoderLayer(c, parts))]);
        norm = new RmsNorm(c.HiddenSize, c.NormEpsilon);
        _rotary = new RotaryFrequencies(c);
        RegisterComponents();
    }

    /// <summary>inputsEmbeds: (batch, seq, hidden) → hidden states (batch, seq, hidden) float32.</summary>
    public Tensor forward(Tensor inputsEmbeds, Tensor? attentionMask, Tensor? positionIds, KvCache? cache)
    {
        var (masks, cos, sin) = _rotary.Prepare(inputsEmbeds, attentionMask, positionIds, cache?.Length ?? 0);
        var x = inputsEmbeds.As(Precision.Compute); // (batch, seq, hidden)
        for (int i = 0; i < layers.Count; i++) x = layers[i].forward(x, masks.For(i), cos, sin, cache, i);
        return norm.forward(x);
    }
}

/// <summary>x + self_attn(input_layernorm(x)), then x + mlp(post_attention_layernorm(x)).</summary>
internal sealed class LlamaDecoderLayer : GradientCheckpointingLayer
{
    internal RmsNorm input_layernorm;
    internal RotaryAttention self_attn;
    internal RmsNorm post_attention_layernorm;
    internal nn.Module<Tensor, Tensor> mlp;

    public LlamaDecoderLayer(ModelConfig c, LlamaParts parts) : base("LlamaDecoderLayer")
    {
        input_layernorm = new RmsNorm(c.HiddenSize, c.NormEpsilon);
        self_attn = parts.Attention(c);
        post_attention_layernorm = new RmsNorm(c.HiddenSize, c.NormEpsilon);
        mlp = parts.Mlp(c);
        RegisterComponents();
    }

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden).</summary>
    public Tensor forward(Tensor x, Tensor bias, Tensor cos, Tensor sin, KvCache? cache, int layer) => Checkpointed(x, cache, x =>
    {
        x = x + self_attn.forward(input_layernorm.forward(x), bias, cos, sin, cache, layer);
        return x + mlp.forward(post_attention_layernorm.forward(x));
    });
}

/// <summary>q_proj, k_proj, v_proj (kv heads may be fewer: GQA), o_proj.</summary>
internal sealed class LlamaAttention : RotaryAttention
{
    internal nn.Module<Tensor, Tensor> q_proj;
    internal nn.Module<Tensor, Tensor> k_proj;
    internal nn.Module<Tensor, Tensor> v_proj;
    internal nn.Module<Tensor, Tensor> o_proj;

    /// <summary>Biases on q/k/v and on o_proj: attention_bias unless given (Qwen2: q/k/v only).</summary>
    public LlamaAttention(ModelConfig c, bool? qkvBias = null, bool? outputBias = null) : base("LlamaAttention", c)
    {
        q_proj = new Linear(c.HiddenSize, Heads * HeadDim, qkvBias ?? c.AttentionBias);
        k_proj = new Linear(c.HiddenSize, KvHeads * HeadDim, qkvBias ?? c.AttentionBias);
        v_proj = new Linear(c.HiddenSize, KvHeads * HeadDim, qkvBias ?? c.AttentionBias);
        o_proj = new Linear(Heads * HeadDim, c.HiddenSize, outputBias ?? c.AttentionBias);
        RegisterComponents();
    }

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden).</summary>
    public override Tensor forward(Tensor x, Tensor bias, Tensor cos, Tensor sin, KvCache? cache, int layer)
    {
        var q = Attention.SplitHeads(q_proj.forward(x), Heads, HeadDim);   // (batch, heads, seq, head_dim)
        var k = Attention.SplitHeads(k_proj.forward(x), KvHeads, HeadDim); // (batch, kv_heads, seq, head_dim)
        var v = Attention.SplitHeads(v_proj.forward(x), KvHeads, HeadDim); // (batch, kv_heads, seq, head_dim)
        return o_proj.forward(Attend(q, k, v, bias, cos, sin, cache, layer));
    }
}

/// <summary>down_proj(act(gate_proj(x)) * up_proj(x)), act = hidden_act (silu: SwiGLU).</summary>
internal sealed class LlamaMlp : nn.Module<Tensor, Tensor>
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

    /// <summary>x: (batch, seq, hidden) → (batch, seq, hidden) through (batch, seq, intermediate).</summary>
    public override Tensor forward(Tensor x) => down_proj.forward(Activations.Apply(_act, gate_proj.forward(x)) * up_proj.forward(x));
}
