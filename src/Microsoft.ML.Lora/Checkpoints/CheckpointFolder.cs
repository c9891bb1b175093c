using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Checkpoints;

/// <summary>
/// The weights of a Hugging Face model folder: a single <c>model.safetensors</c>, or shards listed by
/// <c>model.safetensors.index.json</c> (its <c>weight_map</c> maps each tensor name to a shard file).
/// </summary>
internal sealed class CheckpointFolder : IDisposable
{
    public const string SingleFile = "model.safetensors";
    public const string IndexFile = "model.safetensors.index.json";

    private readonly Dictionary<string, SafeTensorsFile> _byTensor = new(StringComparer.Ordinal);
    private readonly List<SafeTensorsFile> _files = [];

    /// <summary>The folder.</summary>
    public string Folder { get; }

    private CheckpointFolder(string folder) => Folder = folder;

    /// <summary>All tensor names of the checkpoint.</summary>
    public IReadOnlyCollection<string> Names => _byTensor.Keys;

    /// <summary>Opens <paramref name="folder"/>: the index when present, else model.safetensors.</summary>
    public static CheckpointFolder Open(string folder)
    {
        var result = new CheckpointFolder(folder);
        try
        {
            string index = Path.Combine(folder, IndexFile), single = Path.Combine(folder, SingleFile);
            if (File.Exists(index)) result.OpenIndex(index);
            else if (File.Exists(single)) result.Add(SafeTensorsFile.Open(single));
            else throw new FileNotFoundException($"No {SingleFile} or {IndexFile} in '{folder}'.", single);
            return result;
        }
        catch
        {
            result.Dispose();
            throw;
        }
    }

    private void OpenIndex(string index)
    {
        JsonObject? map;
        try { map = JsonNode.Parse(File.ReadAllText(index))?["weight_map"] as JsonObject; }
        catch (System.Text.Json.JsonException e) { throw new InvalidDataException($"'{index}' is not valid JSON: {e.Message}", e); }
        if (map is null) throw new InvalidDataException($"'{index}' has no weight_map object.");
        var shards = new Dictionary<string, SafeTensorsFile>(StringComparer.Ordinal);
        foreach (var (name, value) in map)
        {
            string shard = value?.GetValue<string>() ?? throw new InvalidDataException($"'{index}': weight_map entry '{name}' has no file name.");
            if (!shards.TryGetValue(shard, out var file))
            {
                string path = Path.Combine(Folder, shard);
                if (!File.Exists(path)) throw new FileNotFoundException($"Shard '{shard}' named by '{index}' for tensor '{name}' does not exist.", path);
                file = SafeTensorsFile.Open(path);
                shards[shard] = file;
                _files.Add(file);
            }
            if (!file.Contains(name)) throw new InvalidDataException($"'{index}' maps tensor '{name}' to '{shard}', which does not hold it.");
            _byTensor[name] = file;
        }
    }

    private void Add(SafeTensorsFile file)
    {
        _files.Add(file);
        foreach (var t in file.Tensors) _byTensor[t.Name] = file;
    }

    public bool Contains(string name) => _byTensor.ContainsKey(name);

    public SafeTensorInfo Info(string name) => _byTensor[name].Info(name);

    /// <summary>A new tensor of <paramref name="name"/>, converted straight from the file (<see cref="SafeTensorsFile.Load"/>).</summary>
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null) => _byTensor[name].Load(name, dtype, device);

    /// <summary>Tensor <paramref name="name"/> over the memory-mapped file, without a copy (<see cref="SafeTensorsFile.Map"/>).</summary>
    public Tensor Map(string name) => _byTensor[name].Map(name);

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
        _byTensor.Clear();
    }
}
