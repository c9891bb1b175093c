using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// A frozen linear layer with one (IA)³ vector per adapter, as PEFT's <c>ia3.Linear</c>: y = base(x) · l with l
/// [out, 1] on ordinary targets, y = base(x · l) with l [1, in] on feed-forward targets. State-dict names are PEFT's:
/// <c>base_layer.weight</c>, <c>ia3_l.&lt;adapter&gt;</c> (a parameter, no <c>.weight</c>).
/// </summary>
internal sealed class IA3Linear : nn.Module<Tensor, Tensor>, ILinear, ITunerLayer
{
#pragma warning disable IDE1006 // PEFT's names, registered by field name
    private readonly nn.Module<Tensor, Tensor> base_layer;
    private readonly ParameterDict ia3_l;
#pragma warning restore IDE1006
    private readonly List<string> _merged = new();

    public IA3Linear(nn.Module<Tensor, Tensor> baseLayer, bool isFeedforward) : base(nameof(IA3Linear))
    {
        if (baseLayer is not ILinear) throw new ArgumentException($"IA3 wraps linear layers (ILinear); got {baseLayer.GetType().Name}.");
        base_layer = baseLayer;
        ia3_l = new ParameterDict();
        IsFeedforward = isFeedforward;
        RegisterComponents();
        foreach (var p in base_layer.parameters()) p.requires_grad = false;
    }

    public nn.Module<Tensor, Tensor> BaseLayer => base_layer;
    nn.Module ITunerLayer.BaseLayer => base_layer;
    private ILinear Base => (ILinear)base_layer;
    /// <summary>True: the vector scales the input features (PEFT's is_feedforward).</summary>
    public bool IsFeedforward { get; }
    public long InFeatures => Base.InFeatures;
    public long OutFeatures => Base.OutFeatures;
    public Parameter weight => Base.weight;
    public Parameter? bias => Base.bias;
    public bool FanInFanOut => Base.FanInFanOut;
    public bool Float32Arithmetic { get => Base.Float32Arithmetic; set => Base.Float32Arithmetic = value; }
    /// <summary>The adapter used in forward, or null for none.</summary>
    public string? ActiveAdapter { get; set; }
    /// <summary>When true, forward is the base layer alone (PEFT's disable_adapter()).</summary>
    public bool AdaptersDisabled { get; set; }

    /// <summary>The vector of <paramref name="adapter"/>: [1, in] on a feed-forward target, else [out, 1].</summary>
    public Parameter Vector(string adapter) => ia3_l.ContainsKey(adapter) ? ia3_l[adapter] : throw new KeyNotFoundException($"No IA3 adapter '{adapter}'.");
    /// <inheritdoc/>
    public bool HasAdapter(string name) => ia3_l.ContainsKey(name);

    /// <summary>Adds adapter <paramref name="name"/> (PEFT's update_layer): ones, or N(0, 1) values (torch.randn) without init; float32 over a half-precision base when <paramref name="autocastAdapterDtype"/>.</summary>
    public void AddAdapter(string name, IA3Config config, bool autocastAdapterDtype = true)
    {
        var w = Base.weight;
        var dtype = autocastAdapterDtype && w.dtype is ScalarType.BFloat16 or ScalarType.Float16 ? ScalarType.Float32 : w.dtype;
        long[] shape = IsFeedforward ? [1, InFeatures] : [OutFeatures, 1];
        var v = ones(shape, dtype: dtype, device: w.device);
        if (!config.InitIA3Weights) Training.Rng.Normal(v, std: 1); // torch.randn's values from the installed seeded generator, never torch's global one
        ia3_l.Add((name, new Parameter(v)));
        ActiveAdapter ??= name;
    }

    /// <summary>Removes adapter <paramref name="name"/> (it must not be merged); the first remaining one becomes active if it was.</summary>
    public void DeleteAdapter(string name)
    {
        if (_merged.Contains(name)) throw new InvalidOperationException($"Unmerge adapter '{name}' before deleting it.");
        if (ia3_l.ContainsKey(name))
        {
            using var removed = ia3_l[name];
            ia3_l.Remove(name);
        }
        if (ActiveAdapter == name) ActiveAdapter = ia3_l.Keys.FirstOrDefault();
    }

    public override Tensor forward(Tensor x)
    {
        if (AdaptersDisabled || ActiveAdapter is null || !HasAdapter(ActiveAdapter) || _merged.Contains(ActiveAdapter)) return base_layer.forward(x);
        using var l = Vector(ActiveAdapter).flatten();
        if (IsFeedforward)
        {
            // PEFT: x in the vector's dtype, scaled, back to the input dtype, then the base layer.
            using var scaled = x.to(l.dtype).mul(l);
            using var input = scaled.to(x.dtype);
            return base_layer.forward(input);
        }
        using var result = base_layer.forward(x);
        using var product = result.mul(l);
        return product.to(result.dtype);
    }

    /// <summary>Scales the base weight by the vector (PEFT's merge): its rows (output features), or its columns on a feed-forward target; and the bias of an ordinary target.</summary>
    public void Merge(string? adapter = null)
    {
        adapter ??= ActiveAdapter ?? throw new InvalidOperationException("No adapter to merge.");
        if (_merged.Contains(adapter)) return;
        using (no_grad())
        using (NewDisposeScope())
        {
            var l = Vector(adapter);
            if (!l.isfinite().all().item<bool>()) throw new InvalidOperationException($"IA3 adapter '{adapter}' has non-finite values; refusing to merge.");
            var w = Base.weight;
            w.copy_(w.mul(FanInFanOut ? l.t() : l).to(w.dtype));
            if (!IsFeedforward && Base.bias is { } b) b.copy_(b.mul(l.reshape(b.shape)).to(b.dtype));
        }
        _merged.Add(adapter);
    }

    /// <summary>Divides merged vectors out again (PEFT's unmerge, with its 1e-8 guard; inexact, as PEFT warns).</summary>
    public void Unmerge()
    {
        using (no_grad())
            for (int i = _merged.Count - 1; i >= 0; i--)
            {
                using var scope = NewDisposeScope();
                var l = Vector(_merged[i]) + 1e-8;
                var w = Base.weight;
                w.copy_(w.div(FanInFanOut ? l.t() : l).to(w.dtype));
                if (!IsFeedforward && Base.bias is { } b) b.copy_(b.div(l.reshape(b.shape)).to(b.dtype));
            }
        _merged.Clear();
    }
}
