using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Checkpoints;

/// <summary>
/// Writes safetensors files that Hugging Face's <c>safetensors</c> reads: an 8-byte little-endian header length,
/// a JSON header with keys sorted (<c>__metadata__</c> first) holding dtype, shape and data_offsets, padded with spaces
/// to a multiple of 8 bytes, then the tensors' bytes, contiguous, in header order. The file is written to a temporary
/// file beside the target and renamed over it, so a failed save leaves an existing file intact.
/// </summary>
public static class SafeTensorsWriter
{
    /// <summary>Saves named tensors (any device; copied to the CPU) to <paramref name="path"/>.</summary>
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        var entries = new SortedDictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (name, tensor) in tensors)
        {
            if (name == "__metadata__") throw new ArgumentException("'__metadata__' is reserved and cannot name a tensor.", nameof(tensors));
            if (!entries.TryAdd(name, tensor)) throw new ArgumentException($"Tensor '{name}' is given twice.", nameof(tensors));
        }

        byte[] header = BuildHeader(entries, metadata);
        AtomicFile.Write(path, stream =>
        {
            stream.Write(BitConverter.GetBytes((ulong)header.Length));
            stream.Write(header);
            foreach (var tensor in entries.Values)
            {
                using var scope = NewDisposeScope();
                var cpu = tensor.detach().cpu().contiguous();
                stream.Write(cpu.bytes);
            }
        });
    }

    private static byte[] BuildHeader(SortedDictionary<string, Tensor> entries, IReadOnlyDictionary<string, string>? metadata)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                json.WriteStartObject("__metadata__");
                foreach (var (key, value) in metadata.OrderBy(m => m.Key, StringComparer.Ordinal)) json.WriteString(key, value);
                json.WriteEndObject();
            }
            long offset = 0;
            foreach (var (name, tensor) in entries)
            {
                var dtype = SafeTensorsDTypes.FromScalarType(tensor.dtype);
                long size = tensor.numel() * dtype.ElementSize();
                json.WriteStartObject(name);
                json.WriteString("dtype", dtype.ToString());
                json.WriteStartArray("shape");
                foreach (var d in tensor.shape) json.WriteNumberValue(d);
                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + size);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += size;
            }
            json.WriteEndObject();
        }
        var header = new StringBuilder(Encoding.UTF8.GetString(buffer.ToArray()));
        int length = Encoding.UTF8.GetByteCount(header.ToString());
        header.Append(' ', (8 - length % 8) % 8);
        return Encoding.UTF8.GetBytes(header.ToString());
    }
}
