using System.Buffers.Binary;
using System.Text.Json;
using Microsoft.ML.Lora.Checkpoints;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Checkpoints;

/// <summary>Compares what <see cref="SafeTensorsFile"/> returns with the fixture files' headers parsed here independently.</summary>
public class SafeTensorsFixtureHeaderTests
{
    private sealed record Entry(string Name, string DType, long[] Shape, long Begin, long End);

    private static (long dataStart, List<Entry> entries) ParseIndependently(byte[] file)
    {
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(file.AsSpan(0, 8));
        using var doc = JsonDocument.Parse(file.AsMemory(8, (int)headerLength));
        var entries = new List<Entry>();
        foreach (var p in doc.RootElement.EnumerateObject())
        {
            if (p.Name == "__metadata__") continue;
            var offsets = p.Value.GetProperty("data_offsets");
            entries.Add(new Entry(p.Name, p.Value.GetProperty("dtype").GetString()!,
                p.Value.GetProperty("shape").EnumerateArray().Select(d => d.GetInt64()).ToArray(),
                offsets[0].GetInt64(), offsets[1].GetInt64()));
        }
        return (8 + headerLength, entries);
    }

    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void Reader_returns_the_header_entries_and_the_raw_bytes(string arch)
    {
        string path = Path.Combine(Fixtures.Model(arch), "model.safetensors");
        byte[] raw = File.ReadAllBytes(path);
        var (dataStart, expected) = ParseIndependently(raw);
        expected.Should().NotBeEmpty();

        using var file = SafeTensorsFile.Open(path);
        file.Tensors.Select(t => t.Name).Should().Equal(expected.Select(e => e.Name));
        foreach (var (info, e) in file.Tensors.Zip(expected))
        {
            info.DType.ToString().Should().Be(e.DType, info.Name);
            info.Shape.Should().Equal(e.Shape, info.Name);
            info.Begin.Should().Be(e.Begin, info.Name);
            info.End.Should().Be(e.End, info.Name);

            byte[] stored = raw.AsSpan((int)(dataStart + e.Begin), (int)(e.End - e.Begin)).ToArray();
            file.ReadBytes(info.Name).Should().Equal(stored, info.Name);

            using var scope = NewDisposeScope();
            var tensor = file.Load(info.Name);
            tensor.dtype.Should().Be(info.DType.ToScalarType(), info.Name);
            tensor.shape.Should().Equal(e.Shape, info.Name);
            tensor.bytes.ToArray().Should().Equal(stored, info.Name);
        }
    }

    [Fact]
    public void Load_converts_dtype_on_request()
    {
        string path = Path.Combine(Fixtures.Model("llama"), "model.safetensors");
        using var file = SafeTensorsFile.Open(path);
        using var scope = NewDisposeScope();
        var info = file.Tensors.First(t => t.DType == SafeTensorsDType.F32 && t.Shape.Length == 2);
        var f32 = file.Load(info.Name);
        var f64 = file.Load(info.Name, ScalarType.Float64);
        f64.dtype.Should().Be(ScalarType.Float64);
        f64.to_type(ScalarType.Float32).data<float>().ToArray().Should().Equal(f32.data<float>().ToArray());
    }
}
