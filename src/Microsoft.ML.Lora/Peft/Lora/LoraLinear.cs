using Microsoft.ML.Lora.Training;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// A frozen linear layer plus low-rank updates, as PEFT's <c>lora.Linear</c>: y = base(x) + scale · B(A(dropout(x))),
/// with lora_A [r, in] and lora_B [out, r]. State-dict names are PEFT's: <c>base_layer.weight</c>,
/// <c>lora_A.&lt;adapter&gt;.weight</c>, <c>lora_B.&lt;adapter&gt;.weight</c>. Several adapters may be held; one is active.
/// </summary>
internal sealed class LoraLinear : nn.Module<Tensor, Tensor>, ILinear, ITunerLayer
{
#pragma warning disable IDE1006 // PEFT's names, registered by field name
    private readonly nn.Module<Tensor, Tensor> base_layer;
    private readonly AdapterDict<TorchSharp.Modules.Linear> lora_A;
    private readonly AdapterDict<TorchSharp.Modules.Linear> lora_B;
    private readonly AdapterDict<DoraLinearLayer> lora_magnitude_vector;
#pragma warning restore IDE1006
    private readonly Dictionary<string, double> _scaling = new();
    private readonly Dictionary<string, double> _dropout = new();
    private readonly List<string> _merged = new();
    private readonly Dictionary<string, Tensor> _doraNorms = new(); // n of each merged DoRA adapter, for unmerge

    public LoraLinear(nn.Module<Tensor, Tensor> baseLayer) : base(nameof(LoraLinear))
    {
        if (baseLayer is not ILinear) throw new ArgumentException($"LoRA wraps linear layers (ILinear); got {baseLayer.GetType().Name}.");
        base_layer = baseLayer;
        lora_A = new AdapterDict<TorchSharp.Modules.Linear>("lora_A");
        lora_B = new AdapterDict<TorchSharp.Modules.Linear>("lora_B");
        lora_magnitude_vector = new AdapterDict<DoraLinearLayer>("lora_magnitude_vector");
        RegisterComponents();
        foreach (var p in base_layer.parameters()) p.requires_grad = false;
    }

    public nn.Module<Tensor, Tensor> BaseLayer => base_layer;
    nn.Module ITunerLayer.BaseLayer => base_layer;
    private ILinear Base => (ILinear)base_layer;
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
    public IReadOnlyList<string> MergedAdapters => _merged;
    public IEnumerable<string> Adapters => lora_A.Items.Keys;
    public bool HasAdapter(string name) => lora_A.Items.ContainsKey(name);

    public Parameter LoraA(string adapter) => lora_A.Items.TryGetValue(adapter, out var l) ? l.weight! : throw new KeyNotFoundException($"No LoRA adapter '{adapter}'.");
    public Parameter LoraB(string adapter) => lora_B.Items[adapter].weight!;
    public double Scaling(string adapter) => _scaling[adapter];
    /// <summary>DoRA's magnitude vector m [out] of <paramref name="adapter"/>, or null when it is plain LoRA.</summary>
    public Parameter? Magnitude(string adapter) => lora_magnitude_vector.Items.TryGetValue(adapter, out var d) ? d.weight : null;

    /// <summary>
    /// Adds adapter <paramref name="name"/> initialised as PEFT's <c>reset_lora_parameters</c>; in float32 over a
    /// half-precision base when <paramref name="autocastAdapterDtype"/> (PEFT's autocast_adapter_dtype).
    /// </summary>
    public void AddAdapter(string name, LoraConfig config, bool autocastAdapterDtype = true)
    {
        config.Validate();
        if (lora_A.Items.ContainsKey(name)) throw new ArgumentException($"Adapter '{name}' already exists on this layer.");
        var w = Base.weight;
        // A quantized base (uint8/int8 weight) keeps nn.Linear's float32 adapters, as PEFT's _move_adapter_to_device_of_base_layer.
        var dtype = !w.is_floating_point() || autocastAdapterDtype && w.dtype is ScalarType.BFloat16 or ScalarType.Float16 ? ScalarType.Float32 : w.dtype;
        // Built without torch's initialisation (it draws from the global generator); every case below sets both.
        var a = Uninitialized.Linear(InFeatures, config.R, hasBias: false, w.device, dtype);
        var b = Uninitialized.Linear(config.R, OutFeatures, hasBias: false, w.device, dtype);
        using (no_grad())
        {
            switch (config.InitLoraWeights)
            {
                // Drawn from the caller's seeded generator (Training.Rng), never torch's global one.
                case LoraInit.Default:
                    Rng.KaimingUniform(a.weight!, a: Math.Sqrt(5));
                    nn.init.zeros_(b.weight!);
                    break;
                case LoraInit.Gaussian:
                    Rng.Normal(a.weight!, std: 1.0 / config.R);
                    nn.init.zeros_(b.weight!);
                    break;
                case LoraInit.Random: // nn.Linear's kaiming-uniform init of both
                    Rng.KaimingUniform(a.weight!, a: Math.Sqrt(5));
                    Rng.KaimingUniform(b.weight!, a: Math.Sqrt(5));
                    break;
            }
        }
        lora_A.Add(name, a);
        lora_B.Add(name, b);
        if (config.UseDora)
        {
            // PEFT's DoraLinearLayer.update_layer reads dequantize_module_weight(base_layer): a quantized base's float weight.
            using var dense = DenseWeight();
            lora_magnitude_vector.Add(name, new DoraLinearLayer(dense, a.weight!, b.weight!, config.Scaling, FanInFanOut));
        }
        _scaling[name] = config.Scaling;
        _dropout[name] = config.LoraDropout;
        ActiveAdapter ??= name;
    }

    public void DeleteAdapter(string name)
    {
        if (_merged.Contains(name)) throw new InvalidOperationException($"Unmerge adapter '{name}' before deleting it.");
        lora_A.Remove(name);
        lora_B.Remove(name);
        lora_magnitude_vector.Remove(name);
        _scaling.Remove(name);
        _dropout.Remove(name);
        if (ActiveAdapter == name) ActiveAdapter = lora_A.Items.Keys.FirstOrDefault();
    }

    /// <summary>scale · B·A laid out like the base weight ([out, in], or [in, out] when fan_in_fan_out).</summary>
    public Tensor DeltaWeight(string adapter)
    {
        using var scope = NewDisposeScope();
        var d = matmul(LoraB(adapter), LoraA(adapter)).mul(_scaling[adapter]);
        if (FanInFanOut) d = d.t();
        return d.MoveToOuterDisposeScope();
    }

    public override Tensor forward(Tensor x)
    {
        var result = base_layer.forward(x);
        if (AdaptersDisabled || ActiveAdapter is null || !HasAdapter(ActiveAdapter) || _merged.Contains(ActiveAdapter)) return result;
        var a = lora_A.Items[ActiveAdapter];
        var b = lora_B.Items[ActiveAdapter];
        var drop = _dropout[ActiveAdapter];
        bool dropping = drop > 0 && training;
        using var dx = dropping ? Rng.Dropout(x, drop) : x.alias(); // masks from the step's seeded generator
        using var ax = dx.to(a.weight!.dtype);
        bool isDora = lora_magnitude_vector.Items.TryGetValue(ActiveAdapter, out var dora);
        using var scaled = isDora ? DoraTerm(dora!, ax, a, b, result, dropping) : LoraTerm(ax, a, b, _scaling[ActiveAdapter]);
        // DoRA's term saved the base output for backward: add out of place then.
        if (scaled.dtype == result.dtype) return isDora ? result.add(scaled) : result.add_(scaled);
        // A float32 adapter over a half-precision base: add in float32, round once (PEFT's torch_result_dtype cast).
        using var sum = result.to(scaled.dtype).add_(scaled);
        return sum.to(result.dtype);
    }

    private static Tensor LoraTerm(Tensor x, TorchSharp.Modules.Linear a, TorchSharp.Modules.Linear b, double scaling)
    {
        using var ax = a.forward(x);
        using var bax = b.forward(ax);
        return bax.mul(scaling);
    }

    /// <summary>
    /// DoRA's addition to <paramref name="result"/> (PEFT's DoraLinearVariant.forward): the base output without bias is
    /// reused unless dropout changed the input, in which case W x is recomputed on the dropped-out input.
    /// </summary>
    private Tensor DoraTerm(DoraLinearLayer dora, Tensor x, TorchSharp.Modules.Linear a, TorchSharp.Modules.Linear b, Tensor result, bool dropped)
    {
        using var scope = NewDisposeScope();
        // PEFT: dequantize_module_weight(base_layer).to(x.dtype); a quantized base dequantizes in its own dtype, then casts.
        var w = Base is Quantization.IQuantizedLinear q ? q.DequantizeWeight(x.dtype) : Base.weight.to(x.dtype);
        var baseResult = dropped
            ? nn.functional.linear(x, FanInFanOut ? w.t() : w)
            : (Base.bias is { } bias ? result - bias : result).to(x.dtype);
        return dora.Forward(x, a, b, _scaling[ActiveAdapter!], w, baseResult).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Adds the adapter's update into the base weight (PEFT's merge); forward then skips the adapter. DoRA:
    /// W' = (m / n) · (W + ΔW) per output row, with n = ‖W + ΔW‖ kept for <see cref="Unmerge"/>. A quantized base is
    /// dequantized, merged into and quantized again (PEFT's merge into bitsandbytes' Linear4bit / Linear8bitLt).
    /// </summary>
    public void Merge(string? adapter = null)
    {
        adapter ??= ActiveAdapter ?? throw new InvalidOperationException("No adapter to merge.");
        if (_merged.Contains(adapter)) return;
        using (no_grad())
        using (var scope = NewDisposeScope())
        {
            var d = DeltaWeight(adapter);
            if (!d.isfinite().all().item<bool>()) throw new InvalidOperationException($"Adapter '{adapter}' has non-finite weights; refusing to merge.");
            if (lora_magnitude_vector.Items.TryGetValue(adapter, out var dora))
            {
                // A quantized base: dequantize, apply DoRA's factor, quantize again (PEFT's bnb merge with DoraLinearVariant.merge_safe).
                var w = DenseWeight();
                var norm = dora.WeightNorm(w.to(d.dtype), FanInFanOut ? d.t() : d, 1.0);
                _doraNorms[adapter] = norm.detach().MoveToOuterDisposeScope();
                SetDenseWeight((DoraFactor(dora, _doraNorms[adapter]) * (w.to(d.dtype) + d)).to(w.dtype));
            }
            else AddToBase(d);
        }
        _merged.Add(adapter);
    }

    /// <summary>
    /// base weight += <paramref name="delta"/>; a quantized base is dequantized, added to and quantized again (PEFT's
    /// merge into bitsandbytes' Linear4bit / Linear8bitLt, which rounds the merged weight again).
    /// </summary>
    private void AddToBase(Tensor delta)
    {
        if (Base is Quantization.IQuantizedLinear q)
        {
            using var dense = q.DequantizeWeight();
            using var sum = dense + delta;
            q.Requantize(sum);
        }
        else Base.weight.add_(delta.to(Base.weight.dtype));
    }

    /// <summary>
    /// The base weight as a float tensor (PEFT's dequantize_module_weight): a quantized base's weight dequantized to the
    /// dtype it was quantized from (float32 for LLM.int8, as bitsandbytes' int8_vectorwise_dequant), a new tensor the
    /// caller disposes; a float base's own weight (an alias).
    /// </summary>
    private Tensor DenseWeight() => Base is Quantization.IQuantizedLinear q ? q.DequantizeWeight() : Base.weight.alias();

    /// <summary>Replaces the base weight by <paramref name="w"/> (a quantized base quantizes it again, as PEFT's bnb merge).</summary>
    private void SetDenseWeight(Tensor w)
    {
        if (Base is Quantization.IQuantizedLinear q) q.Requantize(w);
        else Base.weight.copy_(w);
    }

    /// <summary>m / n laid out to scale the base weight's output rows ([out, 1], or [1, out] when fan_in_fan_out).</summary>
    private Tensor DoraFactor(DoraLinearLayer dora, Tensor norm) => (dora.weight / norm).view(FanInFanOut ? [1, -1] : [-1, 1]);

    /// <summary>
    /// Takes merged updates out of the base weight again (DoRA: W = W' / (m / n) - ΔW with the n of the merge); a
    /// quantized base is dequantized and quantized again, so it keeps the roundings of both.
    /// </summary>
    public void Unmerge()
    {
        using (no_grad())
            for (int i = _merged.Count - 1; i >= 0; i--)
            {
                using var scope = NewDisposeScope();
                var adapter = _merged[i];
                var d = DeltaWeight(adapter);
                if (lora_magnitude_vector.Items.TryGetValue(adapter, out var dora) && _doraNorms.Remove(adapter, out var norm))
                    using (norm)
                    {
                        var w = DenseWeight();
                        SetDenseWeight((w.to(d.dtype) / DoraFactor(dora, norm) - d).to(w.dtype));
                    }
                else AddToBase(d.neg());
            }
        _merged.Clear();
    }
}
