using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>Holds one bias-free linear per adapter name, registered under that name (PEFT's ModuleDict: <c>lora_A.default</c>).</summary>
internal sealed class AdapterDict : nn.Module
{
    private readonly Dictionary<string, TorchSharp.Modules.Linear> _items = new();

    public AdapterDict(string name) : base(name) { }

    public IReadOnlyDictionary<string, TorchSharp.Modules.Linear> Items => _items;

    public void Add(string adapter, TorchSharp.Modules.Linear linear)
    {
        _items.Add(adapter, linear);
        register_module(adapter, linear);
    }

    public void Remove(string adapter)
    {
        if (_items.Remove(adapter, out var l)) { register_module(adapter, null!); l.Dispose(); }
    }
}
