using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using Microsoft.ML.Lora.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Checkpoints;

public sealed class SafeTensorsWriterTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static Tensor Sample(SafeTensorsDType dtype) => dtype switch
    {
        SafeTensorsDType.F64 => tensor(new[] { 1.5, -2.25, 1e300, double.Epsilon, 0.0, -0.0 }).reshape(2, 3),
        SafeTensorsDType.F32 => tensor(new[] { 1.5f, -2.25f, 3.4e38f, float.Epsilon, float.NaN, float.NegativeInfinity }).reshape(3, 2),
        SafeTensorsDType.F16 => tensor(new[] { 1.5f, -2.25f, 65504f, 0.000061035156f }).to_type(ScalarType.Float16),
        SafeTensorsDType.BF16 => tensor(new[] { 1.5f, -2.25f, 3.0e38f, 1e-30f }).to_type(ScalarType.BFloat16),
        SafeTensorsDType.I64 => tensor(new[] { long.MinValue, -1L, 0L, long.MaxValue }).reshape(2, 1, 2),
        SafeTensorsDType.I32 => tensor(new[] { int.MinValue, -1, 7, int.MaxValue }),
        SafeTensorsDType.I16 => tensor(new short[] { short.MinValue, -1, 7, short.MaxValue }),
        SafeTensorsDType.I8 => tensor(new sbyte[] { sbyte.MinValue, -1, 7, sbyte.MaxValue }),
        SafeTensorsDType.U8 => tensor(new byte[] { 0, 1, 128, 255 }),
        SafeTensorsDType.BOOL => tensor(new[] { true, false, false, true, true }),
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    [Fact]
    public void Every_dtype_round_trips_values_and_dtype()
    {
        using var scope = NewDisposeScope();
        var dtypes = Enum.GetValues<SafeTensorsDType>();
        dtypes.Should().HaveCount(10);
        var tensors = dtypes.ToDictionary(d => d.ToString(), Sample);
        string path = _temp.File("all.safetensors");
        SafeTensorsWriter.Save(path, tensors);

        using var file = SafeTensorsFile.Open(path);
        file.Tensors.Select(t => t.Name).Should().BeEquivalentTo(tensors.Keys);
        foreach (var dtype in dtypes)
        {
            string name = dtype.ToString();
            var original = tensors[name];
            file.Info(name).DType.Should().Be(dtype);
            file.Info(name).Shape.Should().Equal(original.shape);
            var loaded = file.Load(name);
            loaded.dtype.Should().Be(original.dtype, name);
            loaded.shape.Should().Equal(original.shape, name);
            loaded.bytes.ToArray().Should().Equal(original.bytes.ToArray(), name);
            file.ReadBytes(name).Should().Equal(original.bytes.ToArray(), name);
        }
        file.Load("I32").data<int>().ToArray().Should().Equal(int.MinValue, -1, 7, int.MaxValue);
        file.Load("BOOL").data<bool>().ToArray().Should().Equal(true, false, false, true, true);
        file.Load("BF16").to_type(ScalarType.Float32).data<float>().ToArray()[..2].Should().Equal(1.5f, -2.25f);
    }

    [Fact]
    public void Header_is_8_byte_aligned_with_sorted_keys_and_metadata_first()
    {
        using var scope = NewDisposeScope();
        string[] names = ["b", "a.2", "B", "a.10", "_x", "a"];
        string path = _temp.File("sorted.safetensors");
        SafeTensorsWriter.Save(path, names.Select(n => KeyValuePair.Create(n, ones(3))),
            new Dictionary<string, string> { ["z"] = "1", ["format"] = "pt" });

        byte[] bytes = File.ReadAllBytes(path);
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        (headerLength % 8).Should().Be(0);
        bytes.Length.Should().Be((int)(8 + headerLength + names.Length * 12));
        string header = Encoding.UTF8.GetString(bytes, 8, (int)headerLength);
        header.TrimEnd(' ').Should().EndWith("}");
        (header.Length - header.TrimEnd(' ').Length).Should().BeLessThan(8);

        using var doc = JsonDocument.Parse(header);
        doc.RootElement.EnumerateObject().Select(p => p.Name).Should()
            .Equal("__metadata__", "B", "_x", "a", "a.10", "a.2", "b");
        doc.RootElement.GetProperty("__metadata__").EnumerateObject().Select(p => p.Name).Should().Equal("format", "z");
        var offsets = doc.RootElement.EnumerateObject().Skip(1)
            .Select(p => p.Value.GetProperty("data_offsets").EnumerateArray().Select(o => o.GetInt64()).ToArray()).ToList();
        for (int i = 0; i < offsets.Count; i++) offsets[i].Should().Equal(12L * i, 12L * (i + 1));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(7)]
    public void Header_padding_fills_to_a_multiple_of_8(int extraNameLength)
    {
        using var scope = NewDisposeScope();
        string path = _temp.File("pad.safetensors");
        SafeTensorsWriter.Save(path, [KeyValuePair.Create("w" + new string('x', extraNameLength), zeros(1))]);
        byte[] bytes = File.ReadAllBytes(path);
        (BinaryPrimitives.ReadUInt64LittleEndian(bytes) % 8).Should().Be(0UL);
        using var file = SafeTensorsFile.Open(path);
        file.Tensors.Should().ContainSingle();
    }

    [Fact]
    public void Metadata_round_trips()
    {
        using var scope = NewDisposeScope();
        var metadata = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcode \"quoted\"\n", ["empty"] = "" };
        string path = _temp.File("meta.safetensors");
        SafeTensorsWriter.Save(path, [KeyValuePair.Create("w", ones(2))], metadata);
        using var file = SafeTensorsFile.Open(path);
        file.Metadata.Should().Equal(metadata);
    }

    [Fact]
    public void No_metadata_writes_no_metadata_entry()
    {
        using var scope = NewDisposeScope();
        string path = _temp.File("plain.safetensors");
        SafeTensorsWriter.Save(path, [KeyValuePair.Create("w", ones(2))]);
        using var file = SafeTensorsFile.Open(path);
        file.Metadata.Should().BeEmpty();
        Encoding.UTF8.GetString(File.ReadAllBytes(path)).Should().NotContain("__metadata__");
    }

    [Fact]
    public void Empty_and_non_contiguous_tensors_are_written()
    {
        using var scope = NewDisposeScope();
        var transposed = arange(6, dtype: ScalarType.Float32).reshape(2, 3).t();
        string path = _temp.File("layout.safetensors");
        SafeTensorsWriter.Save(path, [KeyValuePair.Create("t", transposed), KeyValuePair.Create("e", zeros(0, 4))]);
        using var file = SafeTensorsFile.Open(path);
        file.Info("e").Shape.Should().Equal(0L, 4L);
        file.Info("e").ByteLength.Should().Be(0);
        file.Load("e").shape.Should().Equal(0L, 4L);
        file.Load("t").data<float>().ToArray().Should().Equal(0f, 3f, 1f, 4f, 2f, 5f);
    }

    [Fact]
    public void Reserved_and_duplicate_names_are_rejected()
    {
        using var scope = NewDisposeScope();
        string path = _temp.File("bad.safetensors");
        FluentActions.Invoking(() => SafeTensorsWriter.Save(path, [KeyValuePair.Create("__metadata__", ones(1))]))
            .Should().Throw<ArgumentException>().WithMessage("'__metadata__' is reserved*");
        FluentActions.Invoking(() => SafeTensorsWriter.Save(path, [KeyValuePair.Create("a", ones(1)), KeyValuePair.Create("a", ones(1))]))
            .Should().Throw<ArgumentException>().WithMessage("Tensor 'a' is given twice.*");
        File.Exists(path).Should().BeFalse();
    }

    private static IEnumerable<KeyValuePair<string, Tensor>> ThrowingAfterOne(Tensor first)
    {
        yield return KeyValuePair.Create("a", first);
        throw new IOException("enumerator failed");
    }

    [Fact]
    public void Failed_enumeration_leaves_the_existing_file_and_no_temp_files()
    {
        using var scope = NewDisposeScope();
        string path = _temp.File("model.safetensors");
        SafeTensorsWriter.Save(path, [KeyValuePair.Create("old", ones(4))]);
        byte[] before = File.ReadAllBytes(path);

        FluentActions.Invoking(() => SafeTensorsWriter.Save(path, ThrowingAfterOne(zeros(8))))
            .Should().Throw<IOException>().WithMessage("enumerator failed");

        File.ReadAllBytes(path).Should().Equal(before);
        Directory.GetFileSystemEntries(_temp.Path).Select(Path.GetFileName).Should().Equal("model.safetensors");
    }

    [Fact]
    public void Failure_while_writing_tensor_data_leaves_the_existing_file_and_no_temp_files()
    {
        using var scope = NewDisposeScope();
        string path = _temp.File("model.safetensors");
        SafeTensorsWriter.Save(path, [KeyValuePair.Create("old", ones(4))]);
        byte[] before = File.ReadAllBytes(path);

        // "a" is written first; "b" lives on the meta device, has a dtype and shape for the header, but no data to copy.
        var meta = empty(new long[] { 1024 }, ScalarType.Float32, device: new Device(DeviceType.META));
        FluentActions.Invoking(() => SafeTensorsWriter.Save(path, [KeyValuePair.Create("a", ones(1024)), KeyValuePair.Create("b", meta)]))
            .Should().Throw<Exception>();

        File.ReadAllBytes(path).Should().Equal(before);
        Directory.GetFileSystemEntries(_temp.Path).Select(Path.GetFileName).Should().Equal("model.safetensors");
    }

    [Fact]
    public void Atomic_write_that_throws_after_writing_leaves_the_existing_file()
    {
        string path = _temp.File("data.bin");
        File.WriteAllText(path, "old");
        FluentActions.Invoking(() => AtomicFile.Write(path, s => { s.Write(new byte[1 << 16]); s.Flush(); throw new InvalidOperationException("midway"); }))
            .Should().Throw<InvalidOperationException>().WithMessage("midway");
        File.ReadAllText(path).Should().Be("old");
        Directory.GetFileSystemEntries(_temp.Path).Select(Path.GetFileName).Should().Equal("data.bin");
    }

    [Fact]
    public void Save_replaces_an_existing_file()
    {
        using var scope = NewDisposeScope();
        string path = _temp.File("model.safetensors");
        SafeTensorsWriter.Save(path, [KeyValuePair.Create("old", ones(4))]);
        SafeTensorsWriter.Save(path, [KeyValuePair.Create("new", full(2, 7, ScalarType.Int64))]);
        using var file = SafeTensorsFile.Open(path);
        file.Tensors.Select(t => t.Name).Should().Equal("new");
        file.Load("new").data<long>().ToArray().Should().Equal(7L, 7L);
        Directory.GetFileSystemEntries(_temp.Path).Should().ContainSingle();
    }
}
