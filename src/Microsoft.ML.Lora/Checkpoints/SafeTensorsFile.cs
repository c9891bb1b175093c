using System.IO.MemoryMappedFiles;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Checkpoints;

/// <summary>One tensor entry of a safetensors header.</summary>
public sealed record SafeTensorInfo(string Name, SafeTensorsDType DType, long[] Shape, long Begin, long End)
{
    /// <summary>Number of bytes of the tensor's data.</summary>
    public long ByteLength => End - Begin;
}

/// <summary>
/// A safetensors file opened for reading (https://github.com/huggingface/safetensors): an 8-byte little-endian header
/// length, a JSON header, then the tensors' bytes. The file is memory-mapped; the header is validated completely on
/// open, so a malformed file fails with a message naming the problem before any tensor is read.
/// </summary>
public sealed class SafeTensorsFile : IDisposable
{
    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private readonly long _dataStart;
    private readonly Dictionary<string, SafeTensorInfo> _byName;

    /// <summary>The file's path.</summary>
    public string Path { get; }

    /// <summary>The <c>__metadata__</c> entries (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>The tensors in header order.</summary>
    public IReadOnlyList<SafeTensorInfo> Tensors { get; }

    private SafeTensorsFile(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, long dataStart,
        IReadOnlyDictionary<string, string> metadata, List<SafeTensorInfo> tensors)
    {
        Path = path;
        _map = map;
        _view = view;
        _dataStart = dataStart;
        Metadata = metadata;
        Tensors = tensors;
        _byName = tensors.ToDictionary(t => t.Name);
    }

    /// <summary>Opens and validates a safetensors file.</summary>
    public static SafeTensorsFile Open(string path)
    {
        using var stream = File.OpenRead(path);
        // The opened file's length, not FileInfo's: in a Hugging Face cache the path is a symlink into blobs/, and
        // FileInfo.Length is the length of the link itself.
        var length = stream.Length;
        if (length < 8) throw Bad(path, $"the file is {length} bytes long; a safetensors file starts with an 8-byte header length.");
        Span<byte> prefix = stackalloc byte[8];
        stream.ReadExactly(prefix);
        ulong headerLength = BitConverter.ToUInt64(prefix);
        if (headerLength > (ulong)(length - 8))
            throw Bad(path, $"the header length {headerLength} goes beyond the end of the file ({length} bytes).");
        var header = new byte[headerLength];
        stream.ReadExactly(header);
        var (metadata, tensors) = ParseHeader(path, header, length - 8 - (long)headerLength);

        var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        var view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
        return new SafeTensorsFile(path, map, view, 8 + (long)headerLength, metadata, tensors);
    }

    /// <summary>True when the file holds a tensor of that name.</summary>
    public bool Contains(string name) => _byName.ContainsKey(name);

    /// <summary>The header entry of a tensor.</summary>
    public SafeTensorInfo Info(string name) =>
        _byName.TryGetValue(name, out var info) ? info : throw new KeyNotFoundException($"Tensor '{name}' is not in '{Path}'.");

    /// <summary>Copies the raw little-endian bytes of a tensor.</summary>
    public byte[] ReadBytes(string name)
    {
        var info = Info(name);
        var bytes = new byte[info.ByteLength];
        _view.ReadArray(_dataStart + info.Begin, bytes, 0, bytes.Length);
        return bytes;
    }

    /// <summary>
    /// A new tensor of <paramref name="name"/> in <paramref name="dtype"/> (default: its stored dtype) on
    /// <paramref name="device"/> (default: the CPU), converted straight from the file's bytes: no intermediate copy in
    /// the stored dtype, and the pages read are released again (a transient mapping), so loading a whole checkpoint this
    /// way holds each tensor once, in its target dtype.
    /// </summary>
    public Tensor Load(string name, ScalarType? dtype = null, Device? device = null)
    {
        var info = Info(name);
        var target = empty(info.Shape, dtype ?? info.DType.ToScalarType(), device: device);
        if (info.ByteLength == 0) return target;
        try
        {
            if (!IsAligned(info))
            {
                using var bytes = CopyBytes(info);
                target.copy_(bytes);
                return target;
            }
            // In pieces of at most 64 MiB, each through its own mapping, unmapped right after: the file's pages are
            // never resident beside the converted tensor for more than one piece.
            long size = info.DType.ElementSize(), count = info.ByteLength / size, first = (_dataStart + info.Begin) / size;
            long chunk = Math.Max(1, (64L << 20) / size);
            using var flat = target.view(-1);
            for (long i = 0; i < count; i += chunk)
            {
                long n = Math.Min(chunk, count - i);
                using var mapping = MapFile(info.DType.ToScalarType());
                using var piece = mapping.narrow(0, first + i, n);
                using var into = flat.narrow(0, i, n);
                into.copy_(piece);
            }
            return target;
        }
        catch
        {
            target.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Tensor <paramref name="name"/> as it is stored, over the memory-mapped file itself: no copy, no memory until its
    /// pages are read, as transformers loads safetensors. The mapping is private (copy-on-write): writes to the tensor
    /// (a LoRA merge) never reach the file. It outlives this object for as long as the tensor does. A tensor whose bytes
    /// are not aligned to its element size is copied instead.
    /// </summary>
    public Tensor Map(string name)
    {
        var info = Info(name);
        if (info.ByteLength == 0 || !IsAligned(info)) return Load(name);
        var dtype = info.DType.ToScalarType();
        lock (_mapped)
        {
            if (!_mapped.TryGetValue(dtype, out var mapping)) _mapped[dtype] = mapping = MapFile(dtype);
            return View(mapping, info);
        }
    }

    private readonly Dictionary<ScalarType, Tensor> _mapped = [];

    /// <summary>
    /// Reads one value in every memory page of <paramref name="mapped"/> (a tensor from <see cref="Map"/>), so its pages
    /// are resident (and counted in the process's memory) now rather than at first use.
    /// </summary>
    internal static void ReadPages(Tensor mapped)
    {
        long n = mapped.numel();
        if (n == 0) return;
        long perPage = Math.Max(1, Environment.SystemPageSize / mapped.ElementSize);
        using var _ = no_grad();
        using var flat = mapped.view(-1);
        using var touched = flat.slice(0, 0, n, perPage);
        using var sum = touched.sum();
    }

    private bool IsAligned(SafeTensorInfo info) => (_dataStart + info.Begin) % info.DType.ElementSize() == 0;

    /// <summary>The whole file as a 1-D tensor of <paramref name="dtype"/>, memory-mapped privately (torch.from_file, shared=False).</summary>
    private Tensor MapFile(ScalarType dtype)
    {
        long length; // of the file itself, also when Path is a symbolic link (a hub cache snapshot)
        using (var handle = File.OpenHandle(Path)) length = RandomAccess.GetLength(handle);
        return from_file(Path, shared: false, size: length / _elementSizes[dtype], dtype: dtype);
    }

    private static readonly Dictionary<ScalarType, long> _elementSizes = Enum.GetValues<SafeTensorsDType>()
        .ToDictionary(d => d.ToScalarType(), d => (long)d.ElementSize());

    private Tensor View(Tensor mapping, SafeTensorInfo info)
    {
        long size = info.DType.ElementSize();
        return mapping.narrow(0, (_dataStart + info.Begin) / size, info.ByteLength / size).view(info.Shape);
    }

    private unsafe Tensor CopyBytes(SafeTensorInfo info)
    {
        var tensor = empty(info.Shape, info.DType.ToScalarType());
        byte* source = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref source);
        try
        {
            source += _view.PointerOffset + _dataStart + info.Begin;
            Buffer.MemoryCopy(source, (void*)Native.TorchNative.DataPointer(tensor), info.ByteLength, info.ByteLength);
        }
        finally { _view.SafeMemoryMappedViewHandle.ReleasePointer(); }
        return tensor;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_mapped)
        {
            // Tensors handed out by Map keep their part of the mapping alive on their own.
            foreach (var m in _mapped.Values) m.Dispose();
            _mapped.Clear();
        }
        _view.Dispose();
        _map.Dispose();
    }

    internal static (Dictionary<string, string> metadata, List<SafeTensorInfo> tensors) ParseHeader(string path, byte[] header, long dataLength)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(header); }
        catch (JsonException e) { throw Bad(path, $"the header is not valid JSON ({e.Message})."); }
        using var _ = doc;
        if (doc.RootElement.ValueKind != JsonValueKind.Object) throw Bad(path, "the header is not a JSON object.");

        var metadata = new Dictionary<string, string>();
        var tensors = new List<SafeTensorInfo>();
        var names = new HashSet<string>();
        foreach (var property in doc.RootElement.EnumerateObject())
        {
            if (!names.Add(property.Name)) throw Bad(path, $"tensor '{property.Name}' appears twice in the header.");
            if (property.Name == "__metadata__")
            {
                if (property.Value.ValueKind != JsonValueKind.Object) throw Bad(path, "__metadata__ is not a JSON object.");
                foreach (var m in property.Value.EnumerateObject())
                {
                    if (m.Value.ValueKind != JsonValueKind.String) throw Bad(path, $"__metadata__ value '{m.Name}' is not a string.");
                    metadata[m.Name] = m.Value.GetString()!;
                }
                continue;
            }
            tensors.Add(ParseEntry(path, property));
        }

        ValidateLayout(path, tensors, dataLength);
        return (metadata, tensors);
    }

    private static SafeTensorInfo ParseEntry(string path, JsonProperty property)
    {
        string name = property.Name;
        var e = property.Value;
        if (e.ValueKind != JsonValueKind.Object) throw Bad(path, $"tensor '{name}': the entry is not a JSON object.");
        if (!e.TryGetProperty("dtype", out var dtypeJson) || dtypeJson.ValueKind != JsonValueKind.String)
            throw Bad(path, $"tensor '{name}' has no dtype.");
        string dtypeName = dtypeJson.GetString()!;
        if (!SafeTensorsDTypes.TryParse(dtypeName, out var dtype))
            throw Bad(path, $"tensor '{name}' has unknown dtype '{dtypeName}' (supported: {string.Join(", ", SafeTensorsDTypes.Names)}).");
        if (!e.TryGetProperty("shape", out var shapeJson) || shapeJson.ValueKind != JsonValueKind.Array)
            throw Bad(path, $"tensor '{name}' has no shape array.");
        var shape = new List<long>();
        foreach (var dim in shapeJson.EnumerateArray())
        {
            if (dim.ValueKind != JsonValueKind.Number || !dim.TryGetInt64(out long d) || d < 0)
                throw Bad(path, $"tensor '{name}' has an invalid shape {shapeJson.GetRawText()}.");
            shape.Add(d);
        }
        if (!e.TryGetProperty("data_offsets", out var offsets) || offsets.ValueKind != JsonValueKind.Array || offsets.GetArrayLength() != 2
            || !offsets[0].TryGetInt64(out long begin) || !offsets[1].TryGetInt64(out long end))
            throw Bad(path, $"tensor '{name}' has no data_offsets [begin, end].");
        if (begin < 0 || end < begin) throw Bad(path, $"tensor '{name}' has invalid data_offsets [{begin}, {end}].");

        long expected;
        try { expected = shape.Contains(0) ? 0 : checked(shape.Aggregate(1L, (a, b) => a * b) * dtype.ElementSize()); }
        catch (OverflowException)
        {
            throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] of {dtypeName} has more bytes than a 64-bit size can count.");
        }
        if (expected != end - begin)
            throw Bad(path, $"tensor '{name}': shape [{string.Join(", ", shape)}] of {dtypeName} needs {expected} bytes but data_offsets [{begin}, {end}] span {end - begin}.");
        return new SafeTensorInfo(name, dtype, shape.ToArray(), begin, end);
    }

    private static void ValidateLayout(string path, List<SafeTensorInfo> tensors, long dataLength)
    {
        foreach (var t in tensors)
            if (t.End > dataLength)
                throw Bad(path, $"tensor '{t.Name}' data_offsets [{t.Begin}, {t.End}] are out of range: the data section is {dataLength} bytes.");
        var ordered = tensors.Where(t => t.ByteLength > 0).OrderBy(t => t.Begin).ToList();
        for (int i = 1; i < ordered.Count; i++)
            if (ordered[i].Begin < ordered[i - 1].End)
                throw Bad(path, $"tensors '{ordered[i - 1].Name}' [{ordered[i - 1].Begin}, {ordered[i - 1].End}] and '{ordered[i].Name}' [{ordered[i].Begin}, {ordered[i].End}] overlap.");
    }

    private static InvalidDataException Bad(string path, string problem) => new($"Malformed safetensors file '{path}': {problem}");
}
