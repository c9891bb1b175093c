using System.Security.Cryptography;
using System.Text;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// A model folder laid out as the Hugging Face cache lays it out: <c>models--org--name/snapshots/REV/FILE</c> are
/// relative symlinks to <c>../../blobs/SHA256</c>. It loads as the plain folder does.
/// </summary>
public sealed class HubCacheLayoutTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>Copies the files of <paramref name="source"/> into a cache layout and returns the snapshot folder.</summary>
    private string CacheLayout(string source, params string[] files)
    {
        string repo = _temp.File("models--tiny--llama");
        string blobs = Path.Combine(repo, "blobs"), snapshot = Path.Combine(repo, "snapshots", "0123456789abcdef0123456789abcdef01234567");
        Directory.CreateDirectory(blobs);
        Directory.CreateDirectory(snapshot);
        foreach (var file in files)
        {
            byte[] bytes = File.ReadAllBytes(Path.Combine(source, file));
            string blob = Convert.ToHexStringLower(SHA256.HashData(bytes));
            File.WriteAllBytes(Path.Combine(blobs, blob), bytes);
            File.CreateSymbolicLink(Path.Combine(snapshot, file), Path.Combine("..", "..", "blobs", blob));
        }
        return snapshot;
    }

    [Native.LinuxFact]
    public void A_snapshot_of_relative_symlinks_into_blobs_loads_the_same_weights_as_the_folder()
    {
        string source = Fixtures.Model("llama");
        string snapshot = CacheLayout(source, "config.json", CheckpointFolder.SingleFile);
        new FileInfo(Path.Combine(snapshot, CheckpointFolder.SingleFile)).LinkTarget.Should().StartWith("../../blobs/");

        using var scope = NewDisposeScope();
        using var expected = ModelLoader.Load(source);
        using var loaded = ModelLoader.Load(snapshot);

        var want = expected.state_dict();
        var got = loaded.state_dict();
        got.Keys.Should().Equal(want.Keys);
        foreach (var (name, tensor) in want) got[name].allclose(tensor, 0, 0).Should().BeTrue(name);
    }

    [Fact]
    public void A_header_whose_shape_product_overflows_int64_is_refused_naming_the_tensor()
    {
        string header = """{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}""";
        byte[] json = Encoding.UTF8.GetBytes(header);
        string path = _temp.File("overflow.safetensors");
        File.WriteAllBytes(path, [.. BitConverter.GetBytes((ulong)json.Length), .. json]);

        FluentActions.Invoking(() => SafeTensorsFile.Open(path)).Should().Throw<InvalidDataException>().Which.Message.Should()
            .Be($"Malformed safetensors file '{path}': tensor 'w': shape [4294967296, 4294967296] of F32 has more bytes than a 64-bit size can count.");
    }
}
