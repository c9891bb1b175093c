using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.PeftMethods;

/// <summary>
/// A prompt-learning adapter's virtual tokens take positions of the model's context (GPT-2's fixture: n_positions 128),
/// so training cuts examples to the context less those tokens, and an example that does not fit names them. Before,
/// the cut was the whole context, and the first forward pass failed on position 128.
/// </summary>
[Collection("TorchGlobalRng")]
public class PromptContextTests
{
    private static PeftConfig Config(string method) => method switch
    {
        "prompt-tuning" => new PromptTuningConfig { NumVirtualTokens = 8 },
        "p-tuning" => new PromptEncoderConfig { NumVirtualTokens = 8 },
        _ => new PrefixTuningConfig { NumVirtualTokens = 8 },
    };

    private static TrainingExample Long(int tokens) => new([.. Enumerable.Range(0, 20).Select(i => 5 + i)], [.. Enumerable.Range(0, tokens - 20).Select(i => 30 + i % 50)]);

    [Theory]
    [InlineData("prompt-tuning")]
    [InlineData("p-tuning")]
    [InlineData("prefix-tuning")]
    public void Examples_are_cut_to_the_context_left_by_the_virtual_tokens(string method)
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("gpt2")), Config(method));
        using var trainer = new Trainer(peft, new TrainingOptions { BatchSize = 1, MaxSteps = 1, Overlength = OverlengthPolicy.Truncate });
        var state = trainer.Train([Long(200)]);
        state.LossHistory.Should().ContainSingle().Which.Should().BeInRange(0.1, 50, "one step on the example cut to 128 - 8 = 120 tokens");
    }

    [Fact]
    public void An_example_too_long_for_the_context_names_the_virtual_tokens()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("gpt2")), Config("prompt-tuning"));
        using var trainer = new Trainer(peft, new TrainingOptions { BatchSize = 1, MaxSteps = 1, AppendEos = false, Overlength = OverlengthPolicy.Error });
        var fits = () => trainer.Train([Long(120)]);
        fits.Should().NotThrow("120 tokens and 8 virtual tokens fill the 128 positions exactly");
        var act = () => trainer.Train([Long(121)]);
        act.Should().Throw<ArgumentException>().WithMessage(
            "Training example 0 has 121 tokens; the limit is 120 (model context of 128 positions less the adapter's 8 virtual tokens). Shorten it or set Overlength = Truncate.");
    }
}
