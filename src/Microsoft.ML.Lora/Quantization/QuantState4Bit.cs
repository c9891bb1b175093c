using System.Globalization;
using System.Text;
using System.Text.Json;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>
/// A weight quantized to 4 bits as bitsandbytes' <c>Params4bit</c> + <c>QuantState</c>: NF4 or FP4 codes packed two to a
/// byte (element 2i in the high nibble), one absmax per block of <see cref="Blocksize"/> consecutive elements of the
/// flattened weight, and with double quant (<c>compress_statistics</c>) those absmax themselves quantized to 8 bits
/// with the dynamic map in blocks of 256 around their mean. Owns its tensors.
/// </summary>
internal sealed class QuantState4Bit : IDisposable
{
    /// <summary>bitsandbytes' default blocksize of 4-bit weights (transformers' bnb_4bit_blocksize).</summary>
    public const int DefaultBlocksize = 64;

    /// <summary>The blocksize of the nested 8-bit quantization of absmax (double quant).</summary>
    public const int NestedBlocksize = 256;

    /// <summary>"nf4" or "fp4".</summary>
    public string QuantType { get; }
    /// <summary>Elements per absmax block.</summary>
    public long Blocksize { get; }
    /// <summary>The dtype of the weight before quantization; dequantization returns it by default.</summary>
    public ScalarType DType { get; }
    /// <summary>The weight's shape, [out, in] for a linear layer.</summary>
    public long[] Shape { get; }
    /// <summary>uint8 [ceil(n / 2), 1]: two codes a byte, high nibble first.</summary>
    public Tensor Packed { get; private set; }
    /// <summary>float32 [blocks], or uint8 [blocks] (codes of the dynamic map) with double quant.</summary>
    public Tensor Absmax { get; private set; }
    /// <summary>float32 [16]: the code book the nibbles index.</summary>
    public Tensor QuantMap { get; private set; }
    /// <summary>float32 [ceil(blocks / 256)] with double quant, else null.</summary>
    public Tensor? NestedAbsmax { get; private set; }
    /// <summary>float32 [256], the dynamic map, with double quant, else null.</summary>
    public Tensor? NestedQuantMap { get; private set; }
    /// <summary>The float32 mean subtracted from absmax before the nested quantization (0 without double quant).</summary>
    public float Offset { get; }

    /// <summary>True with double quant (bnb_4bit_use_double_quant).</summary>
    public bool DoubleQuant => NestedAbsmax is not null;

    /// <summary>Number of elements of the weight.</summary>
    public long Numel => Shape.Aggregate(1L, (a, b) => a * b);

    private QuantState4Bit(string quantType, long blocksize, ScalarType dtype, long[] shape, Tensor packed, Tensor absmax, Tensor quantMap,
        Tensor? nestedAbsmax, Tensor? nestedQuantMap, float offset)
    {
        QuantType = quantType; Blocksize = blocksize; DType = dtype; Shape = shape;
        Packed = packed; Absmax = absmax; QuantMap = quantMap; NestedAbsmax = nestedAbsmax; NestedQuantMap = nestedQuantMap; Offset = offset;
    }

    /// <summary>
    /// Quantizes <paramref name="weight"/> (float32, bfloat16 or float16, any shape) as bitsandbytes' quantize_4bit on
    /// its default (PyTorch) kernel, at most <paramref name="chunkValues"/> values at a time. <paramref name="weight"/> is
    /// read, not kept.
    /// </summary>
    public static QuantState4Bit Quantize(Tensor weight, string quantType, bool doubleQuant, long blocksize = DefaultBlocksize, long chunkValues = Blockwise.ChunkValues)
    {
        if (weight.dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"4-bit quantization takes float32, bfloat16 or float16 weights; got {weight.dtype}.");
        using var scope = NewDisposeScope();
        var device = weight.device;
        var code = tensor(BnbCodes.FourBit(quantType), device: device);
        var (sorted, order) = SortStable(code);
        var flat = weight.reshape(-1);
        long n = flat.shape[0];
        var (nibbles, absmax) = Blockwise.Quantize(flat, sorted, blocksize, order, chunkValues);
        if (n % 2 == 1)
        {
            // bitsandbytes pads the scaled values with one 0.0 before coding: the pad nibble is the code of 0.
            var (pad, _) = Blockwise.Quantize(zeros(1, device: device), sorted, 1, order);
            nibbles = cat([nibbles, pad]);
        }
        var pairs = nibbles.view(-1, 2);
        var packed = (pairs.select(1, 0) * 16 + pairs.select(1, 1)).to_type(ScalarType.Byte).unsqueeze(1);

        Tensor? nestedAbsmax = null, nestedMap = null;
        float offset = 0;
        if (doubleQuant)
        {
            var offsetTensor = absmax.mean();
            offset = offsetTensor.item<float>();
            nestedMap = tensor(BnbCodes.DynamicMap, device: device);
            (absmax, nestedAbsmax) = Blockwise.Quantize(absmax - offsetTensor, nestedMap, NestedBlocksize, chunkValues: chunkValues);
        }
        var state = new QuantState4Bit(quantType, blocksize, weight.dtype, weight.shape, packed, absmax, code, nestedAbsmax, nestedMap, offset);
        state.MoveToOuterDisposeScope();
        return state;
    }

    /// <summary>The values of <paramref name="code"/> sorted, and for each sorted position the code's index (ties by index, as torch's argsort returns them).</summary>
    private static (Tensor Sorted, Tensor Order) SortStable(Tensor code)
    {
        var values = code.data<float>().ToArray();
        var order = Enumerable.Range(0, values.Length).OrderBy(i => values[i]).ThenBy(i => i).ToArray();
        return (tensor(order.Select(i => values[i]).ToArray(), device: code.device),
                tensor(order.Select(i => (byte)i).ToArray(), device: code.device));
    }

    /// <summary>The float32 absmax of each block: stored, or decoded from the nested 8-bit codes (dynamic_map[q] · nested_absmax + offset).</summary>
    public Tensor DequantizeAbsmax()
    {
        if (NestedAbsmax is null) return Absmax.alias();
        using var scope = NewDisposeScope();
        var values = NestedQuantMap!.index_select(0, Absmax.to_type(ScalarType.Int32));
        return (Blockwise.ScaleBlocks(values, NestedAbsmax, NestedBlocksize) + Offset).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The weight, [<see cref="Shape"/>], in <paramref name="dtype"/> (default <see cref="DType"/>), as bitsandbytes'
    /// dequantize_4bit: the code book is cast to the dtype, multiplied by the block's float32 absmax, rounded once.
    /// Computed in chunks of whole blocks of at most <paramref name="chunkValues"/> values straight into the result, so
    /// the float32 values (and the int32 indices) never exist for the whole weight.
    /// </summary>
    public Tensor Dequantize(ScalarType? dtype = null, long chunkValues = Blockwise.ChunkValues)
    {
        var d = dtype ?? DType;
        var result = empty(Shape, dtype: d, device: Packed.device);
        using var flat = result.view(-1);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var absmax = DequantizeAbsmax();
        // One lookup per byte: row b of the table holds the values of its high and low nibble.
        var b = arange(256, dtype: ScalarType.Int64, device: Packed.device);
        var code = QuantMap.to_type(d).to_type(ScalarType.Float32);
        var table = stack([code.index_select(0, b.div(16, RoundingMode.floor)), code.index_select(0, b.remainder(16))], 1);
        var bytes = Packed.view(-1);
        long n = Numel;
        // A chunk is a whole number of blocks and of bytes (two values each), so it starts on both boundaries.
        long unit = Blocksize % 2 == 0 ? Blocksize : 2 * Blocksize;
        long chunk = Math.Max(1, chunkValues / unit) * unit;
        for (long start = 0; start < n; start += chunk)
        {
            using var inner = NewDisposeScope();
            long count = Math.Min(chunk, n - start);
            var values = table.index_select(0, bytes.narrow(0, start / 2, (count + 1) / 2).to_type(ScalarType.Int32)).view(-1).narrow(0, 0, count);
            var blocks = absmax.narrow(0, start / Blocksize, (count + Blocksize - 1) / Blocksize);
            // Whole blocks scale in place (one temporary less a chunk); the last, shorter block is padded by ScaleBlocks.
            var scaled = count % Blocksize == 0 ? values.view(-1, Blocksize).mul_(blocks.unsqueeze(1)).view(-1) : Blockwise.ScaleBlocks(values, blocks, Blocksize);
            flat.narrow(0, start, count).copy_(scaled);
        }
        return result;
    }

    /// <summary>Moves every tensor to <paramref name="device"/> (dtypes unchanged).</summary>
    public void To(Device device)
    {
        Packed = Move(Packed, device); Absmax = Move(Absmax, device); QuantMap = Move(QuantMap, device);
        if (NestedAbsmax is not null) NestedAbsmax = Move(NestedAbsmax, device);
        if (NestedQuantMap is not null) NestedQuantMap = Move(NestedQuantMap, device);
    }

    private static Tensor Move(Tensor t, Device device)
    {
        if (t.device_type == device.type && t.device_index == device.index) return t;
        var moved = t.to(device);
        t.Dispose();
        return moved;
    }

    /// <summary>Takes every tensor out of any dispose scope: the state belongs to the module that holds it.</summary>
    public void DetachFromDisposeScope()
    {
        foreach (var t in Tensors()) t.DetachFromDisposeScope();
    }

    private void MoveToOuterDisposeScope()
    {
        foreach (var t in Tensors()) t.MoveToOuterDisposeScope();
    }

    private IEnumerable<Tensor> Tensors()
    {
        yield return Packed; yield return Absmax; yield return QuantMap;
        if (NestedAbsmax is not null) yield return NestedAbsmax;
        if (NestedQuantMap is not null) yield return NestedQuantMap;
    }

    /// <summary>The suffix of the serialized quant state's key: <c>quant_state.bitsandbytes__nf4</c>.</summary>
    public static string QuantStateKey(string quantType) => $"quant_state.bitsandbytes__{quantType}";

    /// <summary>
    /// The state dict of bitsandbytes' <c>Linear4bit</c> weight under <paramref name="prefix"/> (e.g. "weight"): the packed
    /// weight, absmax, quant_map, the nested pair with double quant, and the quant state as UTF-8 JSON bytes.
    /// The tensors are views of this state's (the JSON a new one).
    /// </summary>
    public List<KeyValuePair<string, Tensor>> StateDict(string prefix = "weight")
    {
        var dict = new List<KeyValuePair<string, Tensor>>
        {
            new(prefix, Packed), new($"{prefix}.absmax", Absmax), new($"{prefix}.quant_map", QuantMap),
        };
        if (NestedAbsmax is not null)
        {
            dict.Add(new($"{prefix}.nested_absmax", NestedAbsmax));
            dict.Add(new($"{prefix}.nested_quant_map", NestedQuantMap!));
        }
        dict.Add(new($"{prefix}.{QuantStateKey(QuantType)}", tensor(Encoding.UTF8.GetBytes(ToJson()))));
        return dict;
    }

    /// <summary>
    /// The quant state JSON as bitsandbytes' QuantState.as_dict(packed=True) writes it (json.dumps, default separators):
    /// <c>{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [64, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.0515...}</c>.
    /// </summary>
    public string ToJson()
    {
        var s = new StringBuilder();
        s.Append($"{{\"quant_type\": \"{QuantType}\", \"blocksize\": {Blocksize}, \"dtype\": \"{DTypeName(DType)}\", \"shape\": [{string.Join(", ", Shape)}]");
        if (DoubleQuant)
            s.Append($", \"nested_blocksize\": {NestedBlocksize}, \"nested_dtype\": \"float32\", \"nested_offset\": {PythonFloat.Repr(Offset)}");
        return s.Append('}').ToString();
    }

    /// <summary>torch's name of a dtype without the "torch." prefix.</summary>
    public static string DTypeName(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "float32",
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        _ => throw new ArgumentException($"A 4-bit weight's original dtype is float32, bfloat16 or float16; got {dtype}."),
    };

    private static ScalarType ParseDType(string name, string where) => name switch
    {
        "float32" => ScalarType.Float32,
        "bfloat16" => ScalarType.BFloat16,
        "float16" => ScalarType.Float16,
        _ => throw new InvalidDataException($"{where}: dtype \"{name}\" is not float32, bfloat16 or float16."),
    };

    /// <summary>
    /// Reads a state saved by bitsandbytes' Linear4bit (pre-quantized checkpoints): <paramref name="get"/> returns the
    /// tensor of a key relative to the module (e.g. "weight.absmax") or null when absent. Takes ownership of the tensors.
    /// Every inconsistency is an <see cref="InvalidDataException"/> naming <paramref name="module"/> and the tensor.
    /// </summary>
    public static QuantState4Bit FromStateDict(string module, Func<string, Tensor?> get)
    {
        Tensor Require(string key) => get(key) ?? throw new InvalidDataException($"Quantized module '{module}': tensor '{module}.{key}' is missing.");
        string? quantType = null;
        Tensor? json = null;
        foreach (var t in new[] { "nf4", "fp4" })
            if (get($"weight.{QuantStateKey(t)}") is { } j) { (quantType, json) = (t, j); break; }
        if (quantType is null)
            throw new InvalidDataException($"Quantized module '{module}': no '{module}.weight.{QuantStateKey("nf4")}' or '...__fp4' tensor (the quant state of a 4-bit weight).");
        string where = $"'{module}.weight.{QuantStateKey(quantType)}'";
        JsonElement root;
        try
        {
            var bytes = json!.to_type(ScalarType.Byte).data<byte>().ToArray();
            root = JsonDocument.Parse(bytes).RootElement.Clone();
        }
        catch (JsonException e) { throw new InvalidDataException($"{where} is not UTF-8 JSON: {e.Message}"); }
        finally { json!.Dispose(); }

        string Str(string k) => root.TryGetProperty(k, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()! : throw new InvalidDataException($"{where}: no string \"{k}\".");
        long Int(string k) => root.TryGetProperty(k, out var v) && v.TryGetInt64(out long x) && x > 0 ? x : throw new InvalidDataException($"{where}: no positive integer \"{k}\".");
        if (Str("quant_type") != quantType) throw new InvalidDataException($"{where}: quant_type \"{Str("quant_type")}\" does not match the key's {quantType}.");
        long blocksize = Int("blocksize");
        var dtype = ParseDType(Str("dtype"), where);
        if (!root.TryGetProperty("shape", out var shapeJson) || shapeJson.ValueKind != JsonValueKind.Array)
            throw new InvalidDataException($"{where}: no \"shape\" array.");
        var shape = shapeJson.EnumerateArray().Select(d => d.TryGetInt64(out long x) && x >= 0 ? x : throw new InvalidDataException($"{where}: invalid shape {shapeJson.GetRawText()}.")).ToArray();
        bool nested = root.TryGetProperty("nested_offset", out var offsetJson);
        float offset = 0;
        if (nested)
        {
            if (!offsetJson.TryGetDouble(out double o)) throw new InvalidDataException($"{where}: \"nested_offset\" is not a number.");
            offset = (float)o;
            if (Int("nested_blocksize") != NestedBlocksize) throw new InvalidDataException($"{where}: nested_blocksize {Int("nested_blocksize")} is not supported (bitsandbytes writes {NestedBlocksize}).");
            if (Str("nested_dtype") != "float32") throw new InvalidDataException($"{where}: nested_dtype \"{Str("nested_dtype")}\" is not supported (float32).");
        }

        var tensors = new List<Tensor>();
        try
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            long blocks = (n + blocksize - 1) / blocksize;
            Tensor Check(string key, ScalarType type, long numel)
            {
                var t = Require(key);
                tensors.Add(t);
                if (t.dtype != type || t.numel() != numel)
                    throw new InvalidDataException($"Quantized module '{module}': '{module}.{key}' is {t.dtype} [{string.Join(", ", t.shape)}]; the quant state {where} needs {type} with {numel} elements.");
                return t;
            }
            var packed = Check("weight", ScalarType.Byte, (n + 1) / 2).reshape(-1, 1);
            var absmax = Check("weight.absmax", nested ? ScalarType.Byte : ScalarType.Float32, blocks);
            var quantMap = Check("weight.quant_map", ScalarType.Float32, 16);
            Tensor? nestedAbsmax = null, nestedMap = null;
            if (nested)
            {
                nestedAbsmax = Check("weight.nested_absmax", ScalarType.Float32, (blocks + NestedBlocksize - 1) / NestedBlocksize);
                nestedMap = Check("weight.nested_quant_map", ScalarType.Float32, 256);
            }
            return new QuantState4Bit(quantType, blocksize, dtype, shape, packed, absmax, quantMap, nestedAbsmax, nestedMap, offset);
        }
        catch
        {
            foreach (var t in tensors) t.Dispose();
            throw;
        }
    }

    /// <summary>The keys (relative to a module) a serialized 4-bit weight may have.</summary>
    public static readonly string[] Keys =
    [
        "weight", "weight.absmax", "weight.quant_map", "weight.nested_absmax", "weight.nested_quant_map",
        $"weight.{QuantStateKey("nf4")}", $"weight.{QuantStateKey("fp4")}",
    ];

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var t in Tensors()) t.Dispose();
    }
}
