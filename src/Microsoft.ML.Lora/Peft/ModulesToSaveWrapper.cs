using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using Linear = Microsoft.ML.Lora.Models.Layers.Linear;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// PEFT's ModulesToSaveWrapper: keeps the frozen <c>original_module</c> and one trainable copy per adapter under
/// <c>modules_to_save.&lt;adapter&gt;</c>; forward runs the active adapter's copy, or the original when adapters are disabled.
/// </summary>
internal sealed class ModulesToSaveWrapper : nn.Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // PEFT's names, registered by field name
    private readonly nn.Module<Tensor, Tensor> original_module;
    private readonly CopyDict modules_to_save;
#pragma warning restore IDE1006

    public ModulesToSaveWrapper(nn.Module<Tensor, Tensor> original, string adapter) : base(nameof(ModulesToSaveWrapper))
    {
        original_module = original;
        modules_to_save = new CopyDict();
        RegisterComponents();
        ActiveAdapter = adapter;
        Update(adapter);
    }

    public nn.Module<Tensor, Tensor> OriginalModule => original_module;

    /// <summary>Whether a module path or parameter name lies inside a wrapper (its original or one of its copies).</summary>
    public static bool IsInside(string name) =>
        name.Contains(".original_module", StringComparison.Ordinal) || name.Contains(".modules_to_save", StringComparison.Ordinal);
    public string ActiveAdapter { get; set; }
    public bool AdaptersDisabled { get; set; }
    public bool Has(string adapter) => modules_to_save.Items.ContainsKey(adapter);
    public nn.Module<Tensor, Tensor> Copy(string adapter) => modules_to_save.Items[adapter];

    /// <summary>Adds a copy of the original for <paramref name="adapter"/> (PEFT's update; weights are untied from the original).</summary>
    public void Update(string adapter)
    {
        if (!Has(adapter)) modules_to_save.Add(adapter, Clone(original_module));
        foreach (var p in original_module.parameters()) p.requires_grad = false;
    }

    public override Tensor forward(Tensor x) =>
        AdaptersDisabled || !Has(ActiveAdapter) ? original_module.forward(x) : modules_to_save.Items[ActiveAdapter].forward(x);

    /// <summary>PEFT's ModuleDict of copies: each registered under its adapter name.</summary>
    private sealed class CopyDict() : nn.Module("ModuleDict")
    {
        public Dictionary<string, nn.Module<Tensor, Tensor>> Items { get; } = new();
        public void Add(string adapter, nn.Module<Tensor, Tensor> m) { Items.Add(adapter, m); register_module(adapter, m); }
    }

    /// <summary>A deep copy of the layer types this library has (TorchSharp has no generic deepcopy).</summary>
    private static nn.Module<Tensor, Tensor> Clone(nn.Module<Tensor, Tensor> m)
    {
        nn.Module<Tensor, Tensor> copy = m switch
        {
            Linear l => new Linear(l.InFeatures, l.OutFeatures, l.bias is not null, l.weight.dtype, l.weight.device) { Float32Arithmetic = l.Float32Arithmetic },
            Conv1D c => new Conv1D(c.InFeatures, c.OutFeatures, c.weight.dtype, c.weight.device) { Float32Arithmetic = c.Float32Arithmetic },
            Models.Layers.Embedding e => new Models.Layers.Embedding(e.weight.shape[0], e.weight.shape[1], e.weight.dtype, e.weight.device),
            TorchSharp.Modules.Embedding e => new Models.Layers.Embedding(e.weight!.shape[0], e.weight!.shape[1], e.weight!.dtype, e.weight!.device),
            Models.Layers.LayerNorm n => new Models.Layers.LayerNorm(n.Size, n.Eps).to(n.weight.device).to(n.weight.dtype),
            TorchSharp.Modules.LayerNorm n => nn.LayerNorm(n.normalized_shape, n.eps, n.weight is not null, device: n.weight?.device, dtype: n.weight?.dtype),
            _ => throw new NotSupportedException($"modules_to_save cannot copy a {m.GetType().Name}; supported: Linear, Conv1D, Embedding, LayerNorm."),
        };
        var source = m.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        using (no_grad())
            foreach (var (n, p) in copy.named_parameters())
            {
                if (!source.TryGetValue(n, out var s)) throw new NotSupportedException($"modules_to_save: copy of {m.GetType().Name} has no '{n}' in the original.");
                p.copy_(s);
            }
        if (copy.named_parameters().Count() != source.Count) throw new NotSupportedException($"modules_to_save: copy of {m.GetType().Name} differs from the original.");
        return copy;
    }
}
