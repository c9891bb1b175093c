using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// A causal LM with a prompt-learning adapter (PEFT's PeftModelForCausalLM for PROMPT_TUNING, P_TUNING and
/// PREFIX_TUNING). It is itself a <see cref="CausalLm"/>, so generation and evaluation run through it unchanged:
/// <list type="bullet">
/// <item>prompt tuning and P-tuning put the encoder's n rows in front of the input embeddings, the attention mask
/// becomes cat(ones(B, n), mask) (virtual tokens are attended even in padded rows), and the logits have n + T positions;
/// labels get n × -100 in front (<see cref="PrepareLabels"/>);</item>
/// <item>prefix tuning writes the rows, as keys and values of every layer, into the KV cache before the real tokens
/// (keys used as they are, without RoPE); the mask is cat(ones(B, n), mask) and the logits keep T positions.</item>
/// </list>
/// Positions are transformers' defaults when PEFT drops position_ids: past .. past + length - 1 counted from the
/// first virtual token (or after the prefix), with no shift for padding; BLOOM builds ALiBi from the mask instead.
/// Parameter names are PEFT's: <c>base_model.&lt;base names&gt;</c> and <c>prompt_encoder.&lt;adapter&gt;.embedding.weight</c>.
/// </summary>
internal sealed class PromptLearningModel : CausalLm
{
#pragma warning disable IDE1006 // PEFT's names
    private readonly CausalLm base_model;
    private readonly AdapterDict<nn.Module> prompt_encoder;
#pragma warning restore IDE1006
    private readonly Dictionary<string, PromptLearningConfig> _configs = new();

    private PromptLearningModel(CausalLm model) : base(model.GetName())
    {
        base_model = model;
        prompt_encoder = new AdapterDict<nn.Module>("ModuleDict");
        RegisterComponents();
    }

    /// <summary>The model the prompt is learned for (frozen).</summary>
    public CausalLm BaseModel => base_model;
    public override ModelConfig Config => base_model.Config;
    public string ActiveAdapter { get; private set; } = "default";
    /// <summary>The active adapter's config, with its sizes resolved from the model.</summary>
    public PromptLearningConfig PeftConfig => _configs[ActiveAdapter];
    private bool IsPrefix => PeftConfig is PrefixTuningConfig;
    private int VirtualTokens => PeftConfig.NumVirtualTokens;

    /// <summary>
    /// Adds a new prompt-learning adapter to <paramref name="model"/> (get_peft_model): the model is frozen and the
    /// encoder's parameters are the only trainable ones. Random initial values come from a generator seeded with
    /// <paramref name="seed"/> in torch's order, so seed 42 gives what torch.manual_seed(42) then get_peft_model gives.
    /// </summary>
    public static PromptLearningModel Apply(CausalLm model, PromptLearningConfig config, string adapterName = "default", long seed = 42)
    {
        var resolved = config.Resolve(model.Config);
        using var generator = new torch.Generator((ulong)seed);
        nn.Module encoder = resolved switch
        {
            PromptTuningConfig pt => PromptEmbedding.Create(pt, ids => model.Embed(ids.to(model.parameters().First().device)), model.Config.VocabSize, generator),
            PromptEncoderConfig pe => new PromptEncoder(pe, generator),
            PrefixTuningConfig px => PrefixEncoder.Create(px, generator),
            _ => throw new NotSupportedException($"No prompt-learning method for {config.GetType().Name}."),
        };
        return Wrap(model, resolved, encoder, adapterName, trainable: true);
    }

    private static PromptLearningModel Wrap(CausalLm model, PromptLearningConfig config, nn.Module encoder, string adapterName, bool trainable)
    {
        foreach (var p in model.parameters()) p.requires_grad = false;
        var device = model.parameters().First().device;
        encoder.to(device);
        foreach (var p in encoder.parameters()) p.requires_grad = trainable;
        var pl = new PromptLearningModel(model) { ActiveAdapter = adapterName };
        pl.prompt_encoder.Add(adapterName, encoder);
        pl._configs[adapterName] = config;
        return pl;
    }

    /// <summary>
    /// Loads a prompt-learning adapter folder (PeftModel.from_pretrained): its saved <c>prompt_embeddings</c> become the
    /// rows used directly, as PEFT does in inference mode. It cannot be trained further (PEFT refuses too: the encoder
    /// that produced the rows is not saved); start from a new adapter instead.
    /// </summary>
    public static PromptLearningModel Load(CausalLm model, string folder, string adapterName = "default")
    {
        var configPath = Path.Combine(folder, PeftAdapterIO.ConfigFile);
        var config = PromptLearningConfig.Read(PeftAdapterIO.ReadConfigJson(folder), configPath).Resolve(model.Config);
        long width = config is PrefixTuningConfig ? 2L * config.NumLayers!.Value * config.TokenDim!.Value : config.TokenDim!.Value;
        CheckFits(config, model.Config, configPath);
        var rows = nn.Embedding(config.NumVirtualTokens, width);
        var pl = Wrap(model, config, new PromptEmbedding(rows), adapterName, trainable: false);
        PeftAdapterIO.LoadInto(new Dictionary<string, Tensor> { ["prompt_embeddings"] = rows.weight! }, folder);
        return pl;
    }

    /// <summary>The sizes a config records must be the model's: virtual tokens as wide as its embeddings, a prefix as its layers and key/value heads.</summary>
    private static void CheckFits(PromptLearningConfig c, ModelConfig m, string path)
    {
        if (c is PrefixTuningConfig)
        {
            if (c.NumLayers != m.NumLayers || c.TokenDim != m.NumKeyValueHeads * m.HeadDim)
                throw new InvalidDataException($"'{path}': the prefix is for {c.NumLayers} layers of token_dim {c.TokenDim}; the {m.ModelType} model has {m.NumLayers} layers and key/value width {m.NumKeyValueHeads * m.HeadDim}.");
        }
        else if (c.TokenDim != m.HiddenSize)
            throw new InvalidDataException($"'{path}': token_dim {c.TokenDim} differs from the {m.ModelType} model's hidden size {m.HiddenSize}.");
    }

    private IPromptEncoder Encoder => (IPromptEncoder)prompt_encoder.Items[ActiveAdapter];

    /// <summary>The active adapter's rows (n, width): what is prepended (prompt tuning, P-tuning) or cached (prefix tuning).</summary>
    public Tensor Prompt() => Encoder.Output();

    /// <summary>The tensors PEFT saves: <c>prompt_embeddings</c>, the encoder's output (not its embedding or MLP).</summary>
    public SortedDictionary<string, Tensor> StateDict()
    {
        using var _ = no_grad();
        return new SortedDictionary<string, Tensor>(StringComparer.Ordinal) { ["prompt_embeddings"] = Prompt().detach() };
    }

    /// <summary>Writes the adapter folder in PEFT's format (save_pretrained).</summary>
    public void Save(string folder)
    {
        var state = StateDict();
        try { PeftAdapterIO.WriteFolder(folder, state, PeftConfig.ToJson()); }
        finally { foreach (var t in state.Values) t.Dispose(); }
    }

    /// <summary>The encoder's parameters by PEFT's in-memory name (<c>prompt_encoder.default.embedding.weight</c>) when trainable.</summary>
    public List<(string Name, Parameter P)> TrainableParameters() => PeftModel.DistinctParameters(this).Where(p => p.P.requires_grad).ToList();

    /// <summary>PEFT's print_trainable_parameters line.</summary>
    public string TrainableReport()
    {
        var ps = PeftModel.DistinctParameters(this);
        return PeftModel.FormatReport(ps.Where(p => p.P.requires_grad).Sum(p => p.P.numel()), ps.Sum(p => p.P.numel()));
    }

    /// <summary>Labels for the logits of <see cref="CausalLm.Forward"/>: n × -100 in front for prompt tuning and P-tuning, unchanged for prefix tuning.</summary>
    public Tensor PrepareLabels(Tensor labels) => IsPrefix
        ? labels.alias()
        : cat([full(labels.shape[0], VirtualTokens, Training.CausalLmLoss.IgnoreIndex, dtype: labels.dtype, device: labels.device), labels], 1);

    public override Tensor Embed(Tensor inputIds) => base_model.Embed(inputIds);

    /// <summary>
    /// PEFT's forward: <paramref name="positionIds"/> is ignored (PEFT drops it with a warning). With a
    /// <paramref name="cache"/> that already holds the virtual tokens (generation after the first step), only the mask
    /// is extended.
    /// </summary>
    internal override Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        long batch = inputsEmbeds.shape[0], n = VirtualTokens;
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
        var c = PeftConfig;
        int layers = c.NumLayers!.Value, heads = c.NumAttentionHeads!.Value;
        long n = c.NumVirtualTokens, headDim = c.TokenDim!.Value / heads;
        using var scope = NewDisposeScope();
        var kv = Prompt().to(dtype).view(1, n, 2 * layers, heads, headDim).permute(2, 0, 3, 1, 4); // (2L, 1, heads, n, head_dim)
        for (int l = 0; l < layers; l++)
            cache.Update(l, kv[2 * l].expand(batch, -1, -1, -1), kv[2 * l + 1].expand(batch, -1, -1, -1));
    }
}
