using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Training;

[Collection("TorchGlobalRng")]
public class ScheduleLossCollatorTests
{
    [Theory]
    [InlineData(LrSchedulerType.Linear, 0, 0.0)]
    [InlineData(LrSchedulerType.Linear, 1, 0.5)]
    [InlineData(LrSchedulerType.Linear, 2, 1.0)]
    [InlineData(LrSchedulerType.Linear, 5, 0.625)]
    [InlineData(LrSchedulerType.Linear, 9, 0.125)]
    [InlineData(LrSchedulerType.Cosine, 1, 0.5)]
    [InlineData(LrSchedulerType.Cosine, 2, 1.0)]
    [InlineData(LrSchedulerType.Cosine, 6, 0.5)]
    [InlineData(LrSchedulerType.Cosine, 10, 0.0)]
    [InlineData(LrSchedulerType.Constant, 1, 0.5)]
    [InlineData(LrSchedulerType.Constant, 7, 1.0)]
    public void Lr_lambda_matches_transformers(LrSchedulerType type, int step, double expected) =>
        LrSchedule.Factor(type, step, warmup: 2, total: 10).Should().BeApproximately(expected, 1e-12);

    [Fact]
    public void Warmup_ratio_rounds_up_like_transformers()
    {
        LrSchedule.WarmupSteps(new TrainingOptions { WarmupRatio = 0.03 }, 100).Should().Be(3);
        LrSchedule.WarmupSteps(new TrainingOptions { WarmupRatio = 0.1 }, 15).Should().Be(2);
        LrSchedule.WarmupSteps(new TrainingOptions { WarmupRatio = 0.1, WarmupSteps = 7 }, 15).Should().Be(7);
    }

    [Fact]
    public void Loss_shifts_and_ignores_minus_100()
    {
        using var scope = NewDisposeScope();
        // uniform logits over 4 classes: every valid token costs ln 4
        var logits = zeros(2, 3, 4);
        logits[0, 0, 1] = tensor(2f); // predicts labels[0, 1] = 1: -log softmax = log(3 + e^2) - 2
        var labels = tensor(new long[] { 9, 1, 3, -100, -100, 0 }, [2, 3]);
        var (sum, count) = CausalLmLoss.Sum(logits, labels);
        count.Should().Be(3);
        double expected = (Math.Log(3 + Math.Exp(2)) - 2 + 2 * Math.Log(4)) / 3;
        CausalLmLoss.Mean(logits, labels).item<float>().Should().BeApproximately((float)expected, 1e-6f);
        sum.item<float>().Should().BeApproximately((float)(expected * 3), 1e-5f);
    }

    [Fact]
    public void Collator_masks_prompt_appends_eos_and_pads()
    {
        var c = new Collator(padId: 0, eosId: 2, appendEos: true, trainOnPrompt: false, maxLength: 16, OverlengthPolicy.Truncate);
        var a = c.Encode(new TrainingExample([5, 6, 7], [8, 9]), 0);
        var b = c.Encode(new TrainingExample([11], [12]), 1);
        a.Ids.Should().Equal(5, 6, 7, 8, 9, 2);
        a.Labels.Should().Equal(-100, -100, -100, 8, 9, 2);
        using var batch = c.Collate([a, b]);
        batch.InputIds.data<long>().ToArray().Should().Equal(5, 6, 7, 8, 9, 2, 11, 12, 2, 0, 0, 0);
        batch.AttentionMask.data<long>().ToArray().Should().Equal(1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0);
        batch.Labels.data<long>().ToArray().Should().Equal(-100, -100, -100, 8, 9, 2, -100, 12, 2, -100, -100, -100);
        batch.Tokens.Should().Be(9);
    }

    [Fact]
    public void Overlong_examples_truncate_and_count_or_fail()
    {
        var t = new Collator(0, 2, true, false, 4, OverlengthPolicy.Truncate);
        t.Encode(new TrainingExample([1, 3, 4], [5, 6]), 0).Ids.Should().Equal(1, 3, 4, 5);
        t.Truncated.Should().Be(1);
        var e = new Collator(0, 2, true, false, 4, OverlengthPolicy.Error);
        var act = () => e.Encode(new TrainingExample([1, 3, 4], [5, 6]), 7);
        act.Should().Throw<ArgumentException>().WithMessage("Training example 7 has 6 tokens; the limit is 4 (model context). Shorten it or set Overlength = Truncate.");
        act = () => e.Encode(new TrainingExample([], []), 3);
        act.Should().Throw<ArgumentException>().WithMessage("Training example 3 is empty.");
    }

    [Fact]
    public void Shuffle_order_is_seeded_per_epoch()
    {
        var a = Collator.Order(10, 42, 0, true);
        a.Should().BeEquivalentTo(Enumerable.Range(0, 10));
        Collator.Order(10, 42, 0, true).Should().Equal(a);
        Collator.Order(10, 42, 1, true).Should().NotEqual(a);
        Collator.Order(5, 42, 0, false).Should().Equal(0, 1, 2, 3, 4);
    }
}
