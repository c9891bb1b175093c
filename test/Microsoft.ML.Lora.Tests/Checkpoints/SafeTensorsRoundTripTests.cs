using Microsoft.ML.Lora.Checkpoints;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Checkpoints;

public class SafeTensorsRoundTripTests
{
    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void Fixture_model_round_trips_bit_identical(string arch)
    {
        string source = Path.Combine(Fixtures.Model(arch), "model.safetensors");
        string copy = Path.Combine(Path.GetTempPath(), $"mllora-{Guid.NewGuid():N}.safetensors");
        try
        {
            using var scope = NewDisposeScope();
            using (var file = SafeTensorsFile.Open(source))
            {
                file.Tensors.Should().NotBeEmpty();
                file.Metadata.Should().ContainKey("format").WhoseValue.Should().Be("pt");
                SafeTensorsWriter.Save(copy, file.Tensors.Select(t => KeyValuePair.Create(t.Name, file.Load(t.Name))), file.Metadata);
            }
            File.ReadAllBytes(copy).Should().Equal(File.ReadAllBytes(source));
        }
        finally { File.Delete(copy); }
    }
}
