using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// Loading, adding adapters (every PEFT method's layers), training with dropout, sampling and an ML.NET Fit leave
/// libtorch's global generator where it was: the next global draw equals the one right after seeding it. (The test
/// classes of this assembly run one at a time, so nothing else draws meanwhile.)
/// </summary>
public sealed class GlobalGeneratorTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static float[] FirstDraws()
    {
        random.manual_seed(1234);
        using var t = rand(4);
        return t.data<float>().ToArray();
    }

    /// <summary>Seeds the global generator, runs <paramref name="work"/>, and checks the next draws are the first ones.</summary>
    private static void LeavesTheGlobalGeneratorAlone(Action work)
    {
        var expected = FirstDraws();
        random.manual_seed(1234);
        work();
        using var t = rand(4);
        t.data<float>().ToArray().Should().Equal(expected, "nothing may draw from libtorch's global generator");
    }

    [Theory]
    [InlineData("lora")]
    [InlineData("dora")]
    [InlineData("ia3")]
    [InlineData("lora-modules-to-save")]
    [InlineData("prompt-tuning")]
    [InlineData("prefix-tuning")]
    [InlineData("p-tuning")]
    public void FromPretrained_GetPeftModel_training_and_sampling_do_not_draw_from_the_global_generator(string method)
    {
        LeavesTheGlobalGeneratorAlone(() =>
        {
            using var scope = NewDisposeScope();
            var model = CausalLm.FromPretrained(Fixtures.Model("llama"));
            PeftConfig config = method switch
            {
                "dora" => new LoraConfig { R = 2, LoraAlpha = 4, LoraDropout = 0.1, UseDora = true },
                "ia3" => new IA3Config(),
                "lora-modules-to-save" => new LoraConfig { R = 2, LoraAlpha = 4, LoraDropout = 0.1, ModulesToSave = ["lm_head"] },
                "prompt-tuning" => new PromptTuningConfig { NumVirtualTokens = 4 },
                "prefix-tuning" => new PrefixTuningConfig { NumVirtualTokens = 4, PrefixProjection = true },
                "p-tuning" => new PromptEncoderConfig { NumVirtualTokens = 4 },
                _ => new LoraConfig { R = 2, LoraAlpha = 4, LoraDropout = 0.1 },
            };
            var peft = PeftModel.GetPeftModel(model, config);
            using (var trainer = new Trainer(peft, new TrainingOptions { MaxSteps = 2, BatchSize = 2, LearningRate = 1e-3 }))
                trainer.Train([new([1, 2, 3], [4, 5]), new([6, 7], [8, 9, 10])]);
            peft.Generate([1, 2, 3], new GenerationOptions { MaxNewTokens = 3, DoSample = true, Seed = 3, EosTokenIds = [] });
        });
    }

    [Fact]
    public void An_MLNet_Fit_and_Transform_do_not_draw_from_the_global_generator()
    {
        string folder = TinyBaseModel.Create(_temp.File("tiny"), "llama", hiddenSize: 32, layers: 1, heads: 4, seed: 3);
        LeavesTheGlobalGeneratorAlone(() =>
        {
            var ml = new MLContext(seed: 1);
            var data = ml.Data.LoadFromEnumerable(new[] { new MLNet.Row { Prompt = "sky ->: ", Completion = "blue" } });
            using var model = ml.Lora().CausalLm(new LoraCausalLmOptions
            {
                BaseModelFolder = folder, Seed = 1, Lora = { Rank = 2, Alpha = 4, Dropout = 0.1f },
                Training = { MaxSteps = 1 }, Generation = { MaxNewTokens = 2, Temperature = 0.7f },
            }).Fit(data);
            model.Transform(data).Preview();
        });
    }
}
