using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Gradient checkpointing's memory on the GPT-2-small shape (124 M parameters, 12 layers, 768 wide, random weights,
/// float32), LoRA r=8 (dropout 0.1) on c_attn, one forward + backward at batch 4 x 512 tokens: the loss, the
/// gradients and the peak RSS above the loaded model, with checkpointing and without, in one process (each phase
/// builds its model afresh; the peak is reset between them). Args: [--batch N] [--tokens N].
/// </summary>
internal sealed class CheckpointingBenchmark : IBenchmark
{
    public string Name => "checkpointing";
    public string Description => "GPT-2-small LoRA forward+backward at batch 4x512: loss, gradients and peak RSS with and without gradient checkpointing ([--batch N] [--tokens N])";

    public void Run(string[] args)
    {
        int batch = BenchArgs.Int(args, "--batch", 4), tokens = BenchArgs.Int(args, "--tokens", 512);
        // The smaller phase first: memory the first phase leaves in the heap would only inflate the second's peak.
        var on = Phase(checkpointing: true, batch, tokens);
        var off = Phase(checkpointing: false, batch, tokens);
        double lossDiff = Math.Abs(on.Loss - off.Loss) / Math.Abs(off.Loss);
        double gradDiff = on.Grads.Zip(off.Grads, (a, b) => (a - b).abs().max().item<float>() / (double)b.abs().max().item<float>()).Max();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"[checkpointing] loss relative difference {lossDiff:E2}, largest gradient difference {gradDiff:E2} (relative to each tensor's largest entry)"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"[checkpointing] | without: loss {off.Loss:R}, {off.Seconds:F1} s, step peak {off.PeakGiB:F2} GiB (+{off.AboveGiB:F2}) | with: loss {on.Loss:R}, {on.Seconds:F1} s, step peak {on.PeakGiB:F2} GiB (+{on.AboveGiB:F2}) | peak RSS {on.PeakGiB:F2} GiB with, {off.PeakGiB:F2} GiB without"));
        foreach (var g in on.Grads.Concat(off.Grads)) g.Dispose();
    }

    private sealed record Result(double Loss, List<Tensor> Grads, double Seconds, double PeakGiB, double AboveGiB);

    private static Result Phase(bool checkpointing, int batch, int tokens)
    {
        var config = ModelConfig.Parse(new JsonObject
        {
            ["model_type"] = "gpt2", ["vocab_size"] = 50257, ["n_embd"] = 768, ["n_layer"] = 12, ["n_head"] = 12,
            ["n_positions"] = 1024, ["eos_token_id"] = 50256, ["bos_token_id"] = 50256,
        });
        using var model = ModelFactory.CreateRandom(config, seed: 1);
        var lora = PeftModel.GetPeftModel(model, new LoraConfig { R = 8, LoraAlpha = 16, LoraDropout = 0.1 });
        using var trainer = new Trainer(lora, new TrainingOptions { BatchSize = batch, GradientCheckpointing = checkpointing, Seed = 5 });
        var rng = new Random(0);
        var collator = new Collator(50256, 50256, false, true, 1024, OverlengthPolicy.Error);
        var items = Enumerable.Range(0, batch)
            .Select(i => collator.Encode(new TrainingExample([], Enumerable.Range(0, tokens).Select(_ => rng.Next(50257)).ToArray()), i)).ToList();
        using var b = collator.Collate(items, model.Device);
        double before = PeakMemory.StartPhase();
        var sw = Stopwatch.StartNew();
        double loss = trainer.Backward([b]);
        double seconds = sw.Elapsed.TotalSeconds, peak = PeakMemory.PeakRssGiB();
        var grads = lora.TrainableParameters().Select(p => p.P.grad!.detach().clone().DetachFromDisposeScope()).ToList();
        trainer.ZeroGrad();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"[{(checkpointing ? "with" : "without")} checkpointing] batch {batch}x{tokens}: loss {loss:R}, {seconds:F1} s, RSS before {before:F2} GiB, step peak RSS {peak:F2} GiB"));
        return new Result(loss, grads, seconds, peak, peak - before);
    }
}
