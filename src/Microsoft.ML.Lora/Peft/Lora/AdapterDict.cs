using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>Holds one module per adapter name, registered under that name (PEFT's ModuleDict: <c>lora_A.default</c>).</summary>
internal sealed class AdapterDict<T> : nn.Module where T : nn.Module
{
    private readonly Dictionary<string, T> _items = new();

    public AdapterDict(string name) : base(name) { }

    public IReadOnlyDictionary<string, T> Items => _items;

    public void Add(string adapter, T module)
    {
        _items.Add(adapter, module);
        register_module(adapter, module);
    }

    public void Remove(string adapter)
    {
        if (_items.Remove(adapter, out var m)) { register_module(adapter, null!); m.Dispose(); }
    }
}
