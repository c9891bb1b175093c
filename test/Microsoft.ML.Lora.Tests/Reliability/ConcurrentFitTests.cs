using Microsoft.ML.Lora.Tests.MLNet;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// Results depend on the seed and the data only: two Fits running at the same time in one process (each with LoRA
/// dropout, so every step draws masks) give the adapter of a Fit run alone, bit for bit.
/// </summary>
public sealed class ConcurrentFitTests : IDisposable
{
    private readonly TempFolder _temp = new();
    private readonly string _base;

    public ConcurrentFitTests() => _base = TinyBaseModel.Create(_temp.File("tiny-bloom"), "bloom", hiddenSize: 32, layers: 1, heads: 4, seed: 3);

    public void Dispose() => _temp.Dispose();

    private static Row[] Rows() =>
    [
        new() { Prompt = "sky ->: ", Completion = "blue" },
        new() { Prompt = "grass ->: ", Completion = "green" },
        new() { Prompt = "snow ->: ", Completion = "white" },
    ];

    /// <summary>Fits and returns the bytes of the adapter's weights file.</summary>
    private byte[] FitAdapter(string name)
    {
        var ml = new MLContext(seed: 1);
        var options = new LoraCausalLmOptions
        {
            BaseModelFolder = _base,
            Seed = 5,
            Lora = { Rank = 4, Alpha = 8, Dropout = 0.2f },
            Training = { MaxSteps = 4, BatchSize = 2, LearningRate = 1e-2f },
        };
        using var model = ml.Lora().CausalLm(options).Fit(ml.Data.LoadFromEnumerable(Rows()));
        string folder = _temp.File(name);
        Directory.CreateDirectory(folder);
        model.Generator.SaveAdapter(folder);
        return File.ReadAllBytes(Path.Combine(folder, "adapter_model.safetensors"));
    }

    [Fact]
    public async Task Two_concurrent_Fits_equal_the_sequential_Fit_bit_for_bit()
    {
        var sequential = FitAdapter("sequential");

        var first = Task.Factory.StartNew(() => FitAdapter("concurrent-1"), TaskCreationOptions.LongRunning);
        var second = Task.Factory.StartNew(() => FitAdapter("concurrent-2"), TaskCreationOptions.LongRunning);
        var both = await Task.WhenAll(first, second);

        both[0].Should().Equal(sequential);
        both[1].Should().Equal(sequential);
    }
}
