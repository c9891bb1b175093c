using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// The prompt-learning tuner (PEFT's PeftModelForCausalLM for PROMPT_TUNING, P_TUNING and PREFIX_TUNING), one tuner for
/// the three methods: it is itself a <see cref="CausalLm"/> around the frozen base model, so the trainer, generation
/// and evaluation run through it unchanged.
/// <list type="bullet">
/// <item>prompt tuning and P-tuning put the encoder's n rows in front of the input embeddings, the attention mask
/// becomes cat(ones(B, n), mask) (virtual tokens are attended even in padded rows), and the logits have n + T positions;
/// labels get n × -100 in front (<see cref="VirtualTokenPositions"/>);</item>
/// <item>prefix tuning writes the rows, as keys and values of every layer, into the KV cache before the real tokens
/// (keys used as they are, without RoPE); the mask is cat(ones(B, n), mask) and the logits keep T positions.</item>
/// </list>
/// Positions are transformers' defaults when PEFT drops position_ids: past .. past + length - 1 counted from the
/// first virtual token (or after the prefix), with no shift for padding; BLOOM builds ALiBi from the mask instead.
/// Parameter names are PEFT's: <c>base_model.&lt;base names&gt;</c> and <c>prompt_encoder.&lt;adapter&gt;.embedding.weight</c>.
/// </summary>
internal sealed class PromptLearningModel : CausalLm, IPeftTuner
{
#pragma warning disable IDE1006 // PEFT's names
    private readonly CausalLm base_model;
    private readonly AdapterDict<nn.Module> prompt_encoder;
#pragma warning restore IDE1006
    private readonly Dictionary<string, PromptLearningConfig> _configs = new();
    private string? _active;
    private bool _disabled;

    /// <summary>The tuner of <paramref name="model"/> with no adapter yet; the registry makes it.</summary>
    public PromptLearningModel(CausalLm model) : base(model.GetName())
    {
        base_model = model;
        prompt_encoder = new AdapterDict<nn.Module>("ModuleDict");
        RegisterComponents();
    }

    /// <summary>The tuner's model is this wrapper: it runs the base model with the active adapter's virtual tokens.</summary>
    public CausalLm Model => this;
    /// <summary>The model the prompt is learned for (frozen).</summary>
    public CausalLm BaseModel => base_model;
    public override ModelConfig Config => base_model.Config;
    private PromptLearningConfig Active => _configs[_active ?? throw new InvalidOperationException("The prompt-learning model has no adapter.")];
    private bool IsPrefix => Active is PrefixTuningConfig;

    /// <summary>
    /// Adds adapter <paramref name="name"/> (PEFT's _setup_prompt_encoder): its encoder, with the sizes of the config
    /// resolved from the model. Random initial values come from the installed generator (seeded with 42 unless the
    /// caller installed one) in torch's order, so they equal PEFT's after torch.manual_seed(42). In inference mode (an
    /// adapter loaded from a folder) the encoder is only its output rows, which the folder's <c>prompt_embeddings</c>
    /// fill (PEFT builds no MLP then either).
    /// </summary>
    public PeftConfig AddAdapter(string name, PeftConfig peftConfig, bool autocastAdapterDtype, Action<string> warning)
    {
        if (peftConfig is not PromptLearningConfig config)
            throw new ArgumentException($"The prompt-learning tuner takes a PromptTuningConfig, PrefixTuningConfig or PromptEncoderConfig, got {peftConfig.GetType().Name}.");
        var resolved = config.Resolve(Config);
        CheckFits(resolved, Config);
        using var rng = Training.Rng.UseDefaultUnlessInstalled();
        var generator = Training.Rng.Current!;
        nn.Module encoder = resolved switch
        {
            _ when resolved.InferenceMode => new PromptEmbedding(new Models.Layers.Embedding(resolved.NumVirtualTokens, Width(resolved))),
            PromptTuningConfig pt => PromptEmbedding.Create(pt, ids => base_model.Embed(ids.to(base_model.Device)), Config.VocabSize, generator),
            PromptEncoderConfig pe => PromptEncoder.Create(pe, generator),
            PrefixTuningConfig px => PrefixEncoder.Create(px, generator),
            _ => throw new NotSupportedException($"No prompt-learning method for {config.GetType().Name}."),
        };
        encoder.to(base_model.Device);
        foreach (var p in encoder.parameters()) p.requires_grad = false;
        prompt_encoder.Add(name, encoder);
        _configs[name] = resolved;
        _active ??= name;
        return resolved;
    }

    /// <summary>The sizes a config records must be the model's: virtual tokens as wide as its embeddings, a prefix as its layers and key/value heads.</summary>
    private static void CheckFits(PromptLearningConfig c, ModelConfig m)
    {
        if (c is PrefixTuningConfig)
        {
            if (c.NumLayers != m.NumLayers || c.TokenDim != m.NumKeyValueHeads * m.HeadDim || c.NumAttentionHeads != m.NumKeyValueHeads)
                throw new ArgumentException($"{c.GetType().Name}: the prefix is for {c.NumLayers} layers of {c.NumAttentionHeads} heads and token_dim {c.TokenDim}; the {m.ModelType} model has {m.NumLayers} layers and {m.NumKeyValueHeads} key/value heads of width {m.NumKeyValueHeads * m.HeadDim}.");
        }
        else if (c.TokenDim != m.HiddenSize)
            throw new ArgumentException($"{c.GetType().Name}: token_dim {c.TokenDim} differs from the {m.ModelType} model's hidden size {m.HiddenSize}.");
    }

    /// <summary>Width of a saved row: the token dim, or 2 · layers · token dim for a prefix (keys and values of every layer).</summary>
    private static long Width(PromptLearningConfig c) => c is PrefixTuningConfig ? 2L * c.NumLayers!.Value * c.TokenDim!.Value : c.TokenDim!.Value;

    /// <inheritdoc/>
    public void DeleteAdapter(string name)
    {
        prompt_encoder.Remove(name);
        _configs.Remove(name);
        if (_active == name) _active = _configs.Keys.FirstOrDefault();
    }

    /// <inheritdoc/>
    public void SetAdapter(string name) => _active = name;

    /// <summary>When true, forward is the base model's (PEFT's disable_adapter() swaps in the base model's forward).</summary>
    public bool AdaptersDisabled { set => _disabled = value; }

    /// <summary>The encoder's parameters (<c>prompt_encoder.&lt;adapter&gt;...</c>).</summary>
    public IEnumerable<Parameter> TrainableParameters(string name) => prompt_encoder.Items[name].parameters();

    /// <summary>
    /// The positions the active adapter puts in front of the logits (prompt tuning and P-tuning: the virtual tokens);
    /// their labels are -100, as PEFT prepends them.
    /// </summary>
    public int VirtualTokenPositions => _disabled || _active is null || IsPrefix ? 0 : Active.NumVirtualTokens;

    /// <inheritdoc/>
    public int ContextPositions => _disabled || _active is null ? 0 : Active.NumVirtualTokens;

    /// <summary>
    /// The tensors PEFT saves: <c>prompt_embeddings</c>, the encoder's output (not its embedding or MLP). For an encoder
    /// that is only its rows (prompt tuning, prefix tuning without projection, any loaded adapter) it is a view of them.
    /// </summary>
    public SortedDictionary<string, Tensor> StateDict(string name)
    {
        using var _ = no_grad();
        return new SortedDictionary<string, Tensor>(StringComparer.Ordinal) { ["prompt_embeddings"] = Encoder(name).Output().detach() };
    }

    /// <summary>The parameters of an encoder with an MLP (P-tuning, projected prefix), whose saved output does not determine them.</summary>
    public IReadOnlyDictionary<string, Tensor> TrainingState(string name) => prompt_encoder.Items[name] is PromptEmbedding
        ? new Dictionary<string, Tensor>()
        : prompt_encoder.Items[name].named_parameters().ToDictionary(p => $"prompt_encoder.{name}.{p.name}", p => (Tensor)p.parameter);

    /// <summary>The method's fields of adapter_config.json (num_virtual_tokens, token_dim, ...).</summary>
    public JsonObject ConfigJson(string name) => _configs[name].ToJson();

    /// <summary>Prompt-learning adapters change the input, not the weights: PEFT has no merge for them.</summary>
    public void Merge(string name) => throw MergeNotSupported();
    /// <inheritdoc/>
    public void Unmerge() => throw MergeNotSupported();

    private NotSupportedException MergeNotSupported() =>
        new($"{Active.PeftType} adapters cannot be merged into the weights: they put virtual tokens in front of the input, as in PEFT; use the PeftModel as it is, or Unload() for the base model.");

    /// <summary>Drops the adapters and returns the base model (merging is not supported, see <see cref="Merge"/>).</summary>
    public CausalLm Unload(string? mergeName)
    {
        if (mergeName is not null) throw MergeNotSupported();
        foreach (var name in _configs.Keys.ToList()) DeleteAdapter(name);
        return base_model;
    }

    private IPromptEncoder Encoder(string name) => (IPromptEncoder)prompt_encoder.Items[name];

    /// <summary>The active adapter's rows (n, width): what is prepended (prompt tuning, P-tuning) or cached (prefix tuning).</summary>
    public Tensor Prompt() => Encoder(_active!).Output();

    public override Tensor Embed(Tensor inputIds) => base_model.Embed(inputIds);

    /// <summary>
    /// PEFT's forward: <paramref name="positionIds"/> is ignored (PEFT drops it with a warning). With a
    /// <paramref name="cache"/> that already holds the virtual tokens (generation after the first step), only the mask
    /// is extended.
    /// </summary>
    internal override Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null)
    {
        if (_disabled || _active is null) return base_model.ForwardHidden(inputsEmbeds, attentionMask, positionIds, cache);
        using var scope = NewDisposeScope();
        long batch = inputsEmbeds.shape[0], n = Active.NumVirtualTokens;
        bool inject = cache is null || cache.Length == 0;
        var mask = attentionMask is null ? null : cat([ones(batch, n, dtype: attentionMask.dtype, device: attentionMask.device), attentionMask], 1);
        if (IsPrefix)
        {
            var own = cache ?? new KvCache(Config.NumLayers);
            try
            {
                if (inject) FillPrefix(own, batch, inputsEmbeds.dtype);
                return base_model.ForwardHidden(inputsEmbeds, mask, DefaultPositions(batch, own.Length, inputsEmbeds.shape[1], inputsEmbeds.device), own)
                    .MoveToOuterDisposeScope();
            }
            finally { if (cache is null) own.Dispose(); }
        }
        var x = inject ? cat([Prompt().to(inputsEmbeds.dtype).unsqueeze(0).expand(batch, -1, -1), inputsEmbeds], 1) : inputsEmbeds;
        return base_model.ForwardHidden(x, mask, DefaultPositions(batch, cache?.Length ?? 0, x.shape[1], x.device), cache).MoveToOuterDisposeScope();
    }

    /// <summary>The base model's head.</summary>
    internal override Tensor LmHead(Tensor hiddenStates) => base_model.LmHead(hiddenStates);

    /// <summary>transformers' positions when none are given: cache_position = past .. past + length - 1 on every row.</summary>
    private static Tensor DefaultPositions(long batch, long past, long length, Device device) =>
        arange(past, past + length, dtype: ScalarType.Int64, device: device).unsqueeze(0).expand(batch, -1);

    /// <summary>
    /// PEFT's get_prompt for prefix tuning: each row of the rows is [layer0 key | layer0 value | layer1 key | ...], each
    /// part head-major; viewed (1, n, 2L, heads, head_dim) and permuted to (2L, 1, heads, n, head_dim).
    /// </summary>
    private void FillPrefix(KvCache cache, long batch, ScalarType dtype)
    {
        var c = Active;
        int layers = c.NumLayers!.Value, heads = c.NumAttentionHeads!.Value;
        long n = c.NumVirtualTokens, headDim = c.TokenDim!.Value / heads;
        using var scope = NewDisposeScope();
        var kv = Prompt().to(dtype).view(1, n, 2 * layers, heads, headDim).permute(2, 0, 3, 1, 4); // (2L, 1, heads, n, head_dim)
        for (int l = 0; l < layers; l++)
            cache.Update(l, kv[2 * l].expand(batch, -1, -1, -1), kv[2 * l + 1].expand(batch, -1, -1, -1));
    }
}
