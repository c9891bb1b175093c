using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// A forward pass whose attention mask alone would not fit in the machine's available memory is refused before it
/// allocates, with the sizes, instead of an out-of-memory kill. BLOOM (no context of its own) trained through the
/// lower-level Trainer with MaxSequenceLength 0 took any length: a 40,000-token row needs a 25.6 GB ALiBi mask with the
/// fixture's 4 heads (205 GB at BLOOM-7b1's 32 heads in float32). The available memory is pretended small here, so the same
/// rule is tested with sizes this machine can also run when the check is missing (it failed then: no exception).
/// </summary>
public class AttentionBudgetTests
{
    private static TrainingExample Example(int tokens, int seed) =>
        new([], [.. Enumerable.Range(0, tokens).Select(i => (i * 37 + seed) % 997 + 3)]);

    [Fact]
    public void Bloom_training_row_whose_alibi_mask_does_not_fit_is_refused_with_its_sizes()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("bloom")), new LoraConfig { R = 2 });
        using var trainer = new Trainer(peft, new TrainingOptions { BatchSize = 1, MaxSteps = 1, AppendEos = false });
        using var _ = AttentionBudget.Pretend(64L << 20); // 64 MiB available
        // 4 heads × 3,000² float32 = 137 MiB: refused. 4 × 2,000² × 4 = 61 MiB: trains.
        var act = () => trainer.Train([Example(3000, 1)]);
        act.Should().Throw<InsufficientMemoryException>().WithMessage(
            "The bloom model's attention mask for 1 row(s) of 3000 tokens (3000 attended positions) is [1, 4 heads, 3000, 3000] (ALiBi) × 4 bytes = 137 MiB, more than the 64 MiB this machine has available, before any layer runs. Use shorter sequences (TrainingOptions.MaxSequenceLength, LoraTrainingOptions.MaxSequenceLength) or fewer rows at a time (BatchSize).");
        trainer.Train([Example(2000, 2)]).LossHistory.Should().ContainSingle().Which.Should().BeInRange(1, 20);
    }

    [Fact]
    public void Generation_counts_the_cached_positions()
    {
        using var scope = NewDisposeScope();
        using var model = ModelLoader.Load(Fixtures.Model("llama"));
        using var _ = no_grad();
        using var cache = new Lora.Generation.KvCache(model.Config.NumLayers);
        using var prompt = tensor(Enumerable.Range(3, 100).Select(i => (long)i).ToArray(), [1, 100]);
        model.Forward(prompt, cache: cache).Dispose();
        // One new token over 100 cached: a [1, 1, 1, 101] float32 mask, 404 bytes; pretend 400 are available.
        using var next = tensor(new long[] { 7 }, [1, 1]);
        using (AttentionBudget.Pretend(400))
        {
            var act = () => model.Forward(next, cache: cache);
            act.Should().Throw<InsufficientMemoryException>().WithMessage("*1 row(s) of 1 tokens (101 attended positions) is [1, 1, 1, 101] × 4 bytes*");
        }
        using (AttentionBudget.Pretend(404)) model.Forward(next, cache: cache).shape.Should().Equal(1, 1, 1000);
    }

    [Fact]
    public void Available_memory_is_the_machines()
    {
        if (!File.Exists("/proc/meminfo")) return;
        long fromKernel = long.Parse(File.ReadLines("/proc/meminfo").First(l => l.StartsWith("MemAvailable:", StringComparison.Ordinal))
            .Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        AttentionBudget.AvailableBytes().Should().BeCloseTo(fromKernel, 512L << 20, "MemAvailable, read again a moment later");
    }
}
