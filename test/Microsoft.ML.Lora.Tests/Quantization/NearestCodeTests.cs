using Microsoft.ML.Lora.Quantization;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Quantization;

/// <summary>
/// The grid that finds the nearest 4-bit code gives bucketize's answer for every value: on each midpoint, the float32
/// neighbours around it, the ends of [-1, 1], signed zeros and a million uniform values.
/// </summary>
public class NearestCodeTests
{
    private static float Step(float x, int ulps) => BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(x) + ulps);

    private static float[] HardValues(float[] sortedCode)
    {
        var values = new List<float> { -1f, 1f, 0f, -0f, float.Epsilon, -float.Epsilon };
        for (int i = 0; i + 1 < sortedCode.Length; i++)
        {
            float m = (sortedCode[i] + sortedCode[i + 1]) / 2f; // float32 midpoints, as the quantizer computes them
            values.Add(m);
            for (int u = 1; u <= 4; u++) { values.Add(Step(m, u)); values.Add(Step(m, -u)); }
        }
        // Cell edges of every grid size, where the cell index rounds.
        for (int log = 5; log <= 14; log++)
            for (long c = 0; c <= 1L << log; c++)
            {
                float edge = (float)(c * (2.0 / (1L << log)) - 1);
                values.Add(edge); values.Add(Step(edge, 1)); values.Add(Step(edge, -1));
            }
        return values.Where(v => v is >= -1f and <= 1f).ToArray();
    }

    [Theory]
    [InlineData("nf4")]
    [InlineData("fp4")]
    public void Grid_equals_bucketize(string quantType)
    {
        using var scope = NewDisposeScope();
        var sorted = BnbCodes.FourBit(quantType).OrderBy(v => v).ToArray();
        using var code = tensor(sorted);
        using var nearest = new NearestCode(code);
        nearest.UsesGrid.Should().BeTrue($"{quantType}'s midpoints are far enough apart for a grid");
        var midpoints = (code.narrow(0, 0, 15) + code.narrow(0, 1, 15)) / 2.0;
        using var gen = new Generator(7);
        var values = cat([tensor(HardValues(sorted)), rand(1_000_000, generator: gen) * 2 - 1]);
        var expected = bucketize(values, midpoints, outInt32: true);
        var actual = nearest.Indices(values);
        var differ = actual.ne(expected).nonzero();
        differ.shape[0].Should().Be(0, differ.shape[0] == 0 ? "" :
            $"value {values[differ[0, 0]].item<float>():R} gets code {actual[differ[0, 0]].item<int>()}, bucketize {expected[differ[0, 0]].item<int>()}");
    }

    [Fact]
    public void Close_midpoints_fall_back_to_bucketize()
    {
        using var scope = NewDisposeScope();
        using var dynamic = new NearestCode(tensor(BnbCodes.DynamicMap));
        dynamic.UsesGrid.Should().BeFalse("the dynamic map's midpoints near 0 are 1e-7 apart");
        var values = tensor(new[] { -1f, -0.5f, 0f, 1e-7f, 0.3f, 1f });
        var midpoints = tensor(BnbCodes.DynamicMap.Zip(BnbCodes.DynamicMap.Skip(1), (a, b) => (a + b) / 2f).ToArray());
        dynamic.Indices(values).data<int>().ToArray().Should().Equal(bucketize(values, midpoints, outInt32: true).data<int>().ToArray());
    }
}
