using Microsoft.ML.Lora.MLNet;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>LoraCausalLmOptions.NumberOfThreads: checked, applied to libtorch (process-wide) by Fit on the CPU, automatic when null.</summary>
[Collection("TorchGlobalRng")]
public sealed class ThreadOptionTests : MLNetTestBase
{
    [Fact]
    public void A_non_positive_thread_count_is_refused_naming_the_option()
    {
        var create = () => new MLContext().Lora().CausalLm(new LoraCausalLmOptions { BaseModelFolder = BaseFolder, NumberOfThreads = 0 });
        create.Should().Throw<ArgumentOutOfRangeException>().WithMessage("LoraCausalLmOptions.NumberOfThreads must be null (automatic) or positive, got 0.*");
    }

    [Fact]
    public void Fit_sets_the_requested_threads_and_null_the_automatic_half_of_the_processors()
    {
        int before = get_num_threads();
        try
        {
            string baseModel = TinyBaseModel.Create(Path.Combine(Root, "tiny"), "bloom", hiddenSize: 16, layers: 1, heads: 2, seed: 1);
            var ml = new MLContext(seed: 1);
            var data = ml.Data.LoadFromEnumerable(new[] { new Row { Prompt = "a", Completion = "b" } });
            LoraCausalLmOptions Options(int? threads) => new() { BaseModelFolder = baseModel, NumberOfThreads = threads, Training = { MaxSteps = 1 } };

            using (ml.Lora().CausalLm(Options(3)).Fit(data))
                get_num_threads().Should().Be(3);
            using (ml.Lora().CausalLm(Options(null)).Fit(data))
                get_num_threads().Should().Be(CpuThreads.Automatic);
            CpuThreads.Automatic.Should().BeInRange(1, Math.Max(1, Environment.ProcessorCount / 2), "half the processors, at least 1");
        }
        finally { set_num_threads(before); }
    }
}
