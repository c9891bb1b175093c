using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Embedding = Microsoft.ML.Lora.Models.Layers.Embedding;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// A frozen embedding plus low-rank updates, as PEFT's <c>lora.Embedding</c>: y = E[ids] + s · (Aᵀ[ids] · Bᵀ), with
/// <c>lora_embedding_A</c> [r, vocab] and <c>lora_embedding_B</c> [hidden, r] held as parameters (no ".weight" suffix).
/// Init is the reverse of a linear layer's: A = 0, B ~ N(0, 1). No dropout, as in PEFT. The lookup of Aᵀ uses the base
/// embedding's padding_idx: that column of A gets no gradient.
/// </summary>
internal sealed class LoraEmbedding : nn.Module<Tensor, Tensor>, Models.Layers.IWrappedEmbedding, ITunerLayer
{
#pragma warning disable IDE1006 // PEFT's names, registered by field name
    private readonly Embedding base_layer;
    private readonly ParameterDict lora_embedding_A;
    private readonly ParameterDict lora_embedding_B;
#pragma warning restore IDE1006
    private readonly Dictionary<string, double> _scaling = new();
    private readonly List<string> _merged = new();
    private readonly long? _paddingIdx;

    /// <param name="baseLayer">The embedding to adapt; its weight is frozen.</param>
    /// <param name="paddingIdx">The base embedding's padding_idx (transformers passes pad_token_id for LLaMA-style models), or null.</param>
    public LoraEmbedding(Embedding baseLayer, long? paddingIdx) : base(nameof(LoraEmbedding))
    {
        base_layer = baseLayer;
        lora_embedding_A = new ParameterDict();
        lora_embedding_B = new ParameterDict();
        _paddingIdx = paddingIdx;
        RegisterComponents();
        foreach (var p in base_layer.parameters()) p.requires_grad = false;
    }

    /// <summary>The wrapped embedding.</summary>
    public Embedding BaseLayer => base_layer;
    nn.Module ITunerLayer.BaseLayer => base_layer;
    /// <summary>The base embedding matrix [vocab, hidden].</summary>
    public Parameter weight => base_layer.weight;
    /// <summary>The adapter used in forward, or null for none.</summary>
    public string? ActiveAdapter { get; set; }
    /// <summary>When true, forward is the base embedding alone.</summary>
    public bool AdaptersDisabled { get; set; }

    /// <summary>lora_embedding_A of <paramref name="adapter"/> [r, vocab].</summary>
    public Parameter LoraA(string adapter) => lora_embedding_A[adapter];
    /// <inheritdoc/>
    public bool HasAdapter(string name) => lora_embedding_A.ContainsKey(name);
    /// <summary>lora_embedding_B of <paramref name="adapter"/> [hidden, r].</summary>
    public Parameter LoraB(string adapter) => lora_embedding_B[adapter];
    /// <summary>The factor applied to the update of <paramref name="adapter"/>.</summary>
    public double Scaling(string adapter) => _scaling[adapter];

    /// <summary>Adds adapter <paramref name="name"/> as PEFT's Embedding.update_layer and reset_lora_parameters.</summary>
    public void AddAdapter(string name, LoraConfig config, bool autocastAdapterDtype = true)
    {
        config.Validate();
        if (_scaling.ContainsKey(name)) throw new ArgumentException($"Adapter '{name}' already exists on this embedding.");
        var w = weight;
        var dtype = autocastAdapterDtype && w.dtype is ScalarType.BFloat16 or ScalarType.Float16 ? ScalarType.Float32 : w.dtype;
        long vocab = w.shape[0], hidden = w.shape[1];
        // init_lora_weights false keeps both random (torch.randn); true and "gaussian" give A = 0, B ~ N(0, 1).
        // Drawn from the caller's seeded generator (Training.Rng), never torch's global one.
        var a = zeros(config.R, vocab, dtype: dtype, device: w.device);
        var b = zeros(hidden, config.R, dtype: dtype, device: w.device);
        using (no_grad())
        {
            if (config.InitLoraWeights == LoraInit.Random) Training.Rng.Normal(a, std: 1);
            Training.Rng.Normal(b, std: 1);
        }
        lora_embedding_A.Add((name, new Parameter(a)));
        lora_embedding_B.Add((name, new Parameter(b)));
        _scaling[name] = config.Scaling;
        ActiveAdapter ??= name;
    }

    /// <summary>scale · (B·A)ᵀ, laid out like the base weight [vocab, hidden].</summary>
    public Tensor DeltaWeight(string adapter)
    {
        using var scope = NewDisposeScope();
        return matmul(LoraB(adapter), LoraA(adapter)).t().mul(_scaling[adapter]).MoveToOuterDisposeScope();
    }

    public override Tensor forward(Tensor ids)
    {
        var result = base_layer.forward(ids);
        if (AdaptersDisabled || ActiveAdapter is null || !HasAdapter(ActiveAdapter) || _merged.Contains(ActiveAdapter)) return result;
        using var scope = NewDisposeScope();
        var at = LoraA(ActiveAdapter).t(); // (vocab, r)
        var flat = ids.flatten();
        var rows = at.index_select(0, flat);
        if (_paddingIdx is long pad)
            rows = where(flat.eq(pad).unsqueeze(-1), at.detach().index_select(0, flat), rows); // F.embedding's padding_idx: no gradient there
        var afterA = rows.view([.. ids.shape, at.shape[1]]); // (batch, seq, r)
        var update = matmul(afterA, LoraB(ActiveAdapter).t()).mul(_scaling[ActiveAdapter]); // (batch, seq, hidden)
        return result.to(update.dtype).add(update).to(result.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>Adds the update into the base matrix (PEFT's merge); forward then skips the adapter.</summary>
    public void Merge(string? adapter = null)
    {
        adapter ??= ActiveAdapter ?? throw new InvalidOperationException("No adapter to merge.");
        if (_merged.Contains(adapter)) return;
        using (no_grad())
        using (var d = DeltaWeight(adapter))
        {
            if (!d.isfinite().all().item<bool>()) throw new InvalidOperationException($"Adapter '{adapter}' has non-finite weights; refusing to merge.");
            weight.add_(d.to(weight.dtype));
        }
        _merged.Add(adapter);
    }

    /// <summary>Removes adapter <paramref name="name"/> (it must not be merged).</summary>
    public void DeleteAdapter(string name)
    {
        if (_merged.Contains(name)) throw new InvalidOperationException($"Unmerge adapter '{name}' before deleting it.");
        lora_embedding_A.Remove(name);
        lora_embedding_B.Remove(name);
        _scaling.Remove(name);
        if (ActiveAdapter == name) ActiveAdapter = lora_embedding_A.Keys.FirstOrDefault();
    }

    /// <summary>Subtracts merged updates from the base matrix again.</summary>
    public void Unmerge()
    {
        using (no_grad())
            for (int i = _merged.Count - 1; i >= 0; i--)
                using (var d = DeltaWeight(_merged[i])) weight.sub_(d.to(weight.dtype));
        _merged.Clear();
    }
}
