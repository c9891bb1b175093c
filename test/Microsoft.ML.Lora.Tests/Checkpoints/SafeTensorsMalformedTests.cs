using System.Text;
using Microsoft.ML.Lora.Checkpoints;

namespace Microsoft.ML.Lora.Tests.Checkpoints;

/// <summary>Each malformed file fails on open with an <see cref="InvalidDataException"/> naming the file and the problem.</summary>
public sealed class SafeTensorsMalformedTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>Writes an 8-byte little-endian length (the header's unless given), the header and <paramref name="dataLength"/> zero bytes.</summary>
    private string Write(string header, int dataLength, ulong? declaredLength = null)
    {
        byte[] json = Encoding.UTF8.GetBytes(header);
        string path = _temp.File($"{Guid.NewGuid():N}.safetensors");
        using var stream = File.Create(path);
        stream.Write(BitConverter.GetBytes(declaredLength ?? (ulong)json.Length));
        stream.Write(json);
        stream.Write(new byte[dataLength]);
        return path;
    }

    private static void ShouldFail(string path, string problem) =>
        FluentActions.Invoking(() => SafeTensorsFile.Open(path)).Should().Throw<InvalidDataException>()
            .Which.Message.Should().Be($"Malformed safetensors file '{path}': {problem}");

    [Fact]
    public void A_well_formed_file_opens()
    {
        string path = Write("""{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"I8","shape":[],"data_offsets":[8,9]}}""", 9);
        using var file = SafeTensorsFile.Open(path);
        file.Tensors.Select(t => t.Name).Should().Equal("a", "b");
        file.Metadata.Should().Equal(new Dictionary<string, string> { ["format"] = "pt" });
        file.Info("b").Shape.Should().BeEmpty();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(7)]
    public void File_shorter_than_8_bytes(int length)
    {
        string path = _temp.File("short.safetensors");
        File.WriteAllBytes(path, new byte[length]);
        ShouldFail(path, $"the file is {length} bytes long; a safetensors file starts with an 8-byte header length.");
    }

    [Fact]
    public void Header_length_beyond_the_file()
    {
        string path = Write("{}", 0, declaredLength: 3);
        ShouldFail(path, "the header length 3 goes beyond the end of the file (10 bytes).");
    }

    [Fact]
    public void Huge_header_length()
    {
        string path = Write("{}", 0, declaredLength: ulong.MaxValue);
        ShouldFail(path, $"the header length {ulong.MaxValue} goes beyond the end of the file (10 bytes).");
    }

    [Fact]
    public void Invalid_json()
    {
        string path = Write("""{"a":{"dtype":"F32",""", 0);
        FluentActions.Invoking(() => SafeTensorsFile.Open(path)).Should().Throw<InvalidDataException>()
            .Which.Message.Should().StartWith($"Malformed safetensors file '{path}': the header is not valid JSON (");
    }

    [Fact]
    public void Header_that_is_not_an_object()
    {
        ShouldFail(Write("[1,2]", 0), "the header is not a JSON object.");
    }

    [Fact]
    public void Offsets_out_of_range()
    {
        string path = Write("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 12);
        ShouldFail(path, "tensor 'a' data_offsets [0, 16] are out of range: the data section is 12 bytes.");
    }

    [Fact]
    public void Negative_or_reversed_offsets()
    {
        ShouldFail(Write("""{"a":{"dtype":"U8","shape":[0],"data_offsets":[-4,-4]}}""", 0), "tensor 'a' has invalid data_offsets [-4, -4].");
        ShouldFail(Write("""{"a":{"dtype":"U8","shape":[2],"data_offsets":[4,2]}}""", 8), "tensor 'a' has invalid data_offsets [4, 2].");
    }

    [Fact]
    public void Overlapping_offsets()
    {
        string path = Write("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 12);
        ShouldFail(path, "tensors 'a' [0, 8] and 'b' [4, 12] overlap.");
    }

    [Fact]
    public void Overlap_is_found_whatever_the_header_order()
    {
        string path = Write("""{"c":{"dtype":"U8","shape":[4],"data_offsets":[12,16]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]},"a":{"dtype":"U8","shape":[10],"data_offsets":[0,10]}}""", 16);
        ShouldFail(path, "tensors 'a' [0, 10] and 'b' [2, 6] overlap.");
    }

    [Fact]
    public void Shape_times_dtype_size_differs_from_the_byte_span()
    {
        string path = Write("""{"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,24]}}""", 24);
        ShouldFail(path, "tensor 'w': shape [2, 3] of F16 needs 12 bytes but data_offsets [0, 24] span 24.");
    }

    [Fact]
    public void Unknown_dtype()
    {
        string path = Write("""{"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}""", 2);
        ShouldFail(path, "tensor 'w' has unknown dtype 'F8_E4M3' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL).");
    }

    [Theory]
    [InlineData("f32")]
    [InlineData("1")]
    [InlineData("")]
    public void Dtype_names_are_exact(string dtype)
    {
        string path = Write($$$"""{"w":{"dtype":"{{{dtype}}}","shape":[1],"data_offsets":[0,4]}}""", 4);
        ShouldFail(path, $"tensor 'w' has unknown dtype '{dtype}' (supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL).");
    }

    [Fact]
    public void Duplicate_tensor_names()
    {
        string path = Write("""{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}""", 2);
        ShouldFail(path, "tensor 'a' appears twice in the header.");
    }

    [Fact]
    public void Duplicate_metadata()
    {
        string path = Write("""{"__metadata__":{"format":"pt"},"__metadata__":{"format":"np"}}""", 0);
        ShouldFail(path, "tensor '__metadata__' appears twice in the header.");
    }

    [Fact]
    public void Invalid_shape()
    {
        string path = Write("""{"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}""", 1);
        ShouldFail(path, "tensor 'w' has an invalid shape [-1].");
    }

    [Fact]
    public void Missing_fields()
    {
        ShouldFail(Write("""{"w":{"shape":[1],"data_offsets":[0,1]}}""", 1), "tensor 'w' has no dtype.");
        ShouldFail(Write("""{"w":{"dtype":"U8","data_offsets":[0,1]}}""", 1), "tensor 'w' has no shape array.");
        ShouldFail(Write("""{"w":{"dtype":"U8","shape":[1]}}""", 1), "tensor 'w' has no data_offsets [begin, end].");
        ShouldFail(Write("""{"w":{"dtype":"U8","shape":[1],"data_offsets":[0]}}""", 1), "tensor 'w' has no data_offsets [begin, end].");
    }

    [Fact]
    public void Metadata_values_must_be_strings()
    {
        ShouldFail(Write("""{"__metadata__":{"step":3}}""", 0), "__metadata__ value 'step' is not a string.");
    }
}
