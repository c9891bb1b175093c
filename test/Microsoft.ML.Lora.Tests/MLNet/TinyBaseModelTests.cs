using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.MLNet;

[Collection("TorchGlobalRng")]
public class TinyBaseModelTests
{
    /// <summary>The weights follow the seed alone: draws from torch's global generator in between change nothing.</summary>
    [Fact]
    public void Same_seed_gives_the_same_weights_whatever_the_global_generator_did()
    {
        using var temp = new TempFolder();
        byte[] Weights(string name, int seed)
        {
            using (var _ = rand(1000)) { } // moves the global generator
            var folder = TinyBaseModel.Create(Path.Combine(temp.Path, name), "bloom", hiddenSize: 32, layers: 1, heads: 4, seed: seed);
            return File.ReadAllBytes(Path.Combine(folder, "model.safetensors"));
        }
        var first = Weights("a", seed: 5);
        manual_seed(123);
        Weights("b", seed: 5).Should().Equal(first);
        Weights("c", seed: 6).Should().NotEqual(first);
    }
}
