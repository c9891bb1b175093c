using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Tests.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// Non-finite training: options refused up front, the run stopped at the first non-finite value with a message
/// that says which value and at which step.
/// </summary>
public sealed class NonFiniteTrainingTests
{
    private static PeftModel NewModel() =>
        PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig(hidden: 16, layers: 1), seed: 2), new LoraConfig { R = 4, LoraAlpha = 8, TargetModules = [LoraConfig.AllLinear] });

    private static List<TrainingExample> Data() =>
        Enumerable.Range(0, 4).Select(i => new TrainingExample([3 + i, 4 + i, 5 + i], [10 + i, 11 + i, 12 + i, 13 + i])).ToList();

    [Theory]
    [InlineData(double.PositiveInfinity)]
    [InlineData(double.NaN)]
    [InlineData(0.0)]
    public void A_non_finite_or_zero_learning_rate_is_refused_before_training(double lr)
    {
        using var scope = NewDisposeScope();
        var act = () => new Trainer(NewModel(), new TrainingOptions { LearningRate = lr, MaxSteps = 1 });
        act.Should().Throw<ArgumentException>().WithMessage($"TrainingOptions.LearningRate must be positive and finite, got {lr}.");
    }

    [Theory]
    [InlineData(nameof(TrainingOptions.WeightDecay))]
    [InlineData(nameof(TrainingOptions.MaxGradNorm))]
    [InlineData(nameof(TrainingOptions.AdamEpsilon))]
    public void Other_non_finite_options_are_refused_naming_the_option(string option)
    {
        var o = option switch
        {
            nameof(TrainingOptions.WeightDecay) => new TrainingOptions { WeightDecay = double.NaN },
            nameof(TrainingOptions.MaxGradNorm) => new TrainingOptions { MaxGradNorm = double.PositiveInfinity },
            _ => new TrainingOptions { AdamEpsilon = double.NaN },
        };
        o.Invoking(x => x.Validate()).Should().Throw<ArgumentException>().WithMessage($"TrainingOptions.{option} must be *");
    }

    [Fact]
    public void A_NaN_alpha_is_refused_when_the_adapter_is_added()
    {
        using var scope = NewDisposeScope();
        var act = () => PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig(hidden: 16, layers: 1)), new LoraConfig { R = 4, LoraAlpha = double.NaN });
        act.Should().Throw<ArgumentException>().WithMessage("LoraConfig.LoraAlpha (lora_alpha) must be finite, got NaN.");
    }
}
