using System.Text;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Quantization;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Quantization;

/// <summary>
/// NF4/FP4 (with and without double quant) and LLM.int8 against bitsandbytes' reference (shared/fixtures/quant/matrices):
/// bytes, codes, absmax, scales and dequantized values bit for bit.
/// </summary>
public class BnbFormatTests
{
    private static string Folder => Path.Combine(Fixtures.Root, "quant", "matrices");

    private static SafeTensorsFile Open() => SafeTensorsFile.Open(Path.Combine(Folder, "weights.safetensors"));

    private static JsonNode Meta { get; } = JsonNode.Parse(File.ReadAllText(Path.Combine(Folder, "meta.json")))!;

    private static readonly string[] s_matrices = ["normal_64x64", "zero_block_16x64", "odd_5x37", "zero_tail_3x70", "heavy_320x64", "midpoints_2x64"];

    public static TheoryData<string> Matrices => new(s_matrices);

    public static TheoryData<string, string> FourBitCases
    {
        get
        {
            var data = new TheoryData<string, string>();
            foreach (var m in s_matrices) foreach (var f in new[] { "nf4", "nf4_dq", "fp4", "fp4_dq" }) data.Add(m, f);
            return data;
        }
    }

    /// <summary>Exact equality of dtype, shape and every bit (NaN-safe, -0.0 distinct from 0.0).</summary>
    private static void BitEqual(Tensor actual, Tensor expected, string what)
    {
        actual.dtype.Should().Be(expected.dtype, what);
        actual.shape.Should().Equal(expected.shape, what);
        using var a = actual.contiguous().cpu();
        using var e = expected.contiguous().cpu();
        byte[] Bytes(Tensor t) => t.dtype switch
        {
            ScalarType.Float32 => t.data<float>().ToArray().SelectMany(BitConverter.GetBytes).ToArray(),
            ScalarType.Byte => t.data<byte>().ToArray(),
            ScalarType.Int8 => t.data<sbyte>().ToArray().Select(x => (byte)x).ToArray(),
            _ => throw new NotSupportedException(t.dtype.ToString()),
        };
        var (ab, eb) = (Bytes(a), Bytes(e));
        int first = Enumerable.Range(0, ab.Length).FirstOrDefault(i => ab[i] != eb[i], -1);
        first.Should().Be(-1, $"{what} must equal the reference bit for bit (first differing byte {first})");
    }

    private static float NextUp(float x) => BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(x) + (x >= 0 ? 1 : -1));

    [Fact]
    public void Code_books_equal_bitsandbytes()
    {
        using var f = Open();
        using var nf4 = tensor(BnbCodes.Nf4);
        using var fp4 = tensor(BnbCodes.Fp4);
        using var dyn = tensor(BnbCodes.DynamicMap);
        BitEqual(nf4, f.Load("nf4_code"), "nf4_code");
        BitEqual(fp4, f.Load("fp4_code"), "fp4_code");
        BitEqual(dyn, f.Load("dynamic_map"), "dynamic_map");
    }

    [Theory]
    [MemberData(nameof(FourBitCases))]
    public void Four_bit_quantization_equals_bitsandbytes(string matrix, string format)
    {
        using var scope = NewDisposeScope();
        using var f = Open();
        string p = $"{matrix}.{format}.";
        string quantType = format[..3];
        bool dq = format.EndsWith("_dq", StringComparison.Ordinal);
        var weight = f.Load($"{matrix}.weight");
        var meta = Meta["matrices"]![matrix]!["formats"]![format]!;

        using var state = QuantState4Bit.Quantize(weight, quantType, dq);
        if (dq)
        {
            // torch's float32 mean depends on its SIMD summation order: allow one ulp (README), then compare the rest exactly.
            float expected = (float)meta["offset_float32"]!.GetValue<double>();
            state.Offset.Should().BeOneOf(expected, NextUp(expected), -NextUp(-expected));
            BitEqual(state.DequantizeAbsmax(), f.Load(p + "absmax_dequantized"), "absmax_dequantized");
            BitEqual(state.NestedAbsmax!, f.Load(p + "weight.nested_absmax"), "nested_absmax");
            BitEqual(state.NestedQuantMap!, f.Load(p + "weight.nested_quant_map"), "nested_quant_map");
        }
        BitEqual(state.Packed, f.Load(p + "weight"), "packed weight");
        BitEqual(Unpack(state.Packed, weight.shape), f.Load(p + "codes"), "codes");
        BitEqual(state.Absmax, f.Load(p + "weight.absmax"), "absmax");
        BitEqual(state.QuantMap, f.Load(p + "weight.quant_map"), "quant_map");
        BitEqual(state.Dequantize(), f.Load(p + "dequantized"), "dequantized");
        state.ToJson().Should().Be(meta["quant_state_json"]!.GetValue<string>());
        var json = state.StateDict().Single(kv => kv.Key == $"weight.quant_state.bitsandbytes__{quantType}").Value;
        BitEqual(json, f.Load(p + $"weight.quant_state.bitsandbytes__{quantType}"), "serialized quant state");
    }

    [Theory]
    [MemberData(nameof(FourBitCases))]
    public void Stored_four_bit_state_dequantizes_exactly(string matrix, string format)
    {
        using var scope = NewDisposeScope();
        using var f = Open();
        string p = $"{matrix}.{format}.";
        using var state = QuantState4Bit.FromStateDict($"{matrix}.{format}", key => f.Contains(p + key) ? f.Load(p + key) : null);
        BitEqual(state.Dequantize(), f.Load(p + "dequantized"), "dequantized");
        state.ToJson().Should().Be(Meta["matrices"]![matrix]!["formats"]![format]!["quant_state_json"]!.GetValue<string>());
    }

    [Theory]
    [MemberData(nameof(Matrices))]
    public void Int8_quantization_equals_bitsandbytes(string matrix)
    {
        using var scope = NewDisposeScope();
        using var f = Open();
        var (q, scb) = Int8Weight.Quantize(f.Load($"{matrix}.weight"));
        BitEqual(q, f.Load($"{matrix}.int8.weight"), "int8 weight");
        BitEqual(scb, f.Load($"{matrix}.int8.SCB"), "SCB");
        BitEqual(Int8Weight.Dequantize(q, scb), f.Load($"{matrix}.int8.dequantized"), "dequantized");
        BitEqual(Int8Weight.Dequantize(f.Load($"{matrix}.int8.weight"), f.Load($"{matrix}.int8.SCB")), f.Load($"{matrix}.int8.dequantized"), "dequantized from the stored weight");
    }

    /// <summary>
    /// The arithmetic runs in chunks (Blockwise.ChunkValues, 1M values) that the fixture's matrices never fill; with
    /// chunks of a few values, every matrix crosses many chunk boundaries (tails, odd lengths, the nested absmax too), and
    /// every byte and value must still be bitsandbytes'.
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(64)]
    [InlineData(100)]
    [InlineData(333)]
    public void Chunked_arithmetic_equals_bitsandbytes(long chunkValues)
    {
        using var scope = NewDisposeScope();
        using var f = Open();
        foreach (var matrix in s_matrices)
        {
            var weight = f.Load($"{matrix}.weight");
            foreach (var format in new[] { "nf4", "nf4_dq", "fp4", "fp4_dq" })
            {
                string p = $"{matrix}.{format}.", what = $"{matrix} {format} in chunks of {chunkValues}";
                using var state = QuantState4Bit.Quantize(weight, format[..3], format.EndsWith("_dq", StringComparison.Ordinal), chunkValues: chunkValues);
                BitEqual(state.Packed, f.Load(p + "weight"), what + ": packed weight");
                BitEqual(state.Absmax, f.Load(p + "weight.absmax"), what + ": absmax");
                BitEqual(state.Dequantize(chunkValues: chunkValues), f.Load(p + "dequantized"), what + ": dequantized");
                using var bf16 = state.Dequantize(ScalarType.BFloat16, chunkValues);
                using var whole = state.Dequantize(ScalarType.BFloat16, long.MaxValue);
                BitEqual(bf16.to_type(ScalarType.Float32), whole.to_type(ScalarType.Float32), what + ": bfloat16");
            }
            var (q, scb) = Int8Weight.Quantize(weight, chunkValues);
            BitEqual(q, f.Load($"{matrix}.int8.weight"), $"{matrix} int8 in chunks of {chunkValues}");
            BitEqual(scb, f.Load($"{matrix}.int8.SCB"), $"{matrix} SCB in chunks of {chunkValues}");
            BitEqual(Int8Weight.Dequantize(q, scb, chunkValues: chunkValues), f.Load($"{matrix}.int8.dequantized"), $"{matrix} int8 dequantized in chunks of {chunkValues}");
            using var int8Bf16 = Int8Weight.Dequantize(q, scb, ScalarType.BFloat16, chunkValues);
            using var int8Whole = Int8Weight.Dequantize(q, scb, ScalarType.Float32, long.MaxValue).to_type(ScalarType.BFloat16);
            BitEqual(int8Bf16.to_type(ScalarType.Float32), int8Whole.to_type(ScalarType.Float32), $"{matrix} int8 to bfloat16 in chunks of {chunkValues}");
        }
    }

    [Fact]
    public void All_zero_blocks_and_rows_give_zeros_never_nan()
    {
        using var scope = NewDisposeScope();
        var w = zeros(3, 70);
        foreach (var type in new[] { "nf4", "fp4" })
            foreach (var dq in new[] { false, true })
            {
                using var state = QuantState4Bit.Quantize(w, type, dq);
                state.Dequantize().abs().max().item<float>().Should().Be(0, $"{type} dq={dq}");
            }
        var (q, scb) = Int8Weight.Quantize(w);
        Int8Weight.Dequantize(q, scb).abs().max().item<float>().Should().Be(0);
    }

    [Theory]
    [InlineData(0.05156621336936951, "0.05156621336936951")]
    [InlineData(0.7702596783638, "0.7702596783638")]
    [InlineData(1e-05, "1e-05")]
    [InlineData(0.0001, "0.0001")]
    [InlineData(1.5e-07, "1.5e-07")]
    [InlineData(2.0, "2.0")]
    [InlineData(1e16, "1e+16")]
    [InlineData(123456.5, "123456.5")]
    [InlineData(-0.25, "-0.25")]
    public void Offsets_are_written_as_python_repr(double value, string expected) => PythonFloat.Repr(value).Should().Be(expected);

    private static Tensor Unpack(Tensor packed, long[] shape)
    {
        long n = shape.Aggregate(1L, (a, b) => a * b);
        var bytes = packed.view(-1);
        return stack([bytes.div(16, RoundingMode.floor), bytes.remainder(16)], 1).view(-1).narrow(0, 0, n).to_type(ScalarType.Byte).view(shape);
    }

    [Fact]
    public void Malformed_quant_state_names_module_and_tensor()
    {
        using var scope = NewDisposeScope();
        using var f = Open();
        string p = "odd_5x37.nf4.";
        var act = () => QuantState4Bit.FromStateDict("layer", key => key == "weight.absmax" ? zeros(2) : f.Contains(p + key) ? f.Load(p + key) : null);
        act.Should().Throw<InvalidDataException>().WithMessage("*'layer.weight.absmax'*Float32 with 3 elements*");
        var noState = () => QuantState4Bit.FromStateDict("layer", key => key == "weight" ? f.Load(p + key) : null);
        noState.Should().Throw<InvalidDataException>().WithMessage("*layer.weight.quant_state.bitsandbytes__nf4*");
        var badJson = () => QuantState4Bit.FromStateDict("layer", key => key.StartsWith("weight.quant_state", StringComparison.Ordinal)
            ? (key.EndsWith("nf4", StringComparison.Ordinal) ? tensor(Encoding.UTF8.GetBytes("{\"quant_type\": \"nf4\"")) : null) : f.Load(p + key));
        badJson.Should().Throw<InvalidDataException>().WithMessage("*not UTF-8 JSON*");
    }
}
