using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// The logits' share of a step at BLOOM's 250,880-token vocabulary: a BLOOM-shaped model with a tiny body (hidden 64,
/// 2 layers, float32, random weights), LoRA on query_key_value, one forward + backward over batch 1 x 512 tokens, once
/// with the trainer's chunked loss (CausalLm.LossSum) and once with the plain loss over the full float32 logits
/// (Forward, then CausalLmLoss.Sum). Reports both losses and each phase's peak RSS above what was resident before it.
/// Args: [--batch N] [--tokens N] [--hidden N].
/// </summary>
internal sealed class ChunkedLossBenchmark : IBenchmark
{
    public string Name => "chunked-loss";
    public string Description => "BLOOM vocabulary (250,880), tiny body: step peak RSS with the chunked loss vs the plain loss over full logits ([--batch N] [--tokens N] [--hidden N])";

    public void Run(string[] args)
    {
        int batch = BenchArgs.Int(args, "--batch", 1), tokens = BenchArgs.Int(args, "--tokens", 512), hidden = BenchArgs.Int(args, "--hidden", 64);
        var config = ModelConfig.Parse(new JsonObject
        {
            ["model_type"] = "bloom", ["vocab_size"] = 250880, ["hidden_size"] = hidden, ["n_layer"] = 2, ["n_head"] = 4,
            ["layer_norm_epsilon"] = 1e-5, ["bos_token_id"] = 1, ["eos_token_id"] = 2, ["pad_token_id"] = 3,
        });
        using var model = ModelFactory.CreateRandom(config, seed: 1);
        var lora = PeftModel.GetPeftModel(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = ["query_key_value"] });
        model.train();
        var rng = new Random(0);
        using var ids = tensor(Enumerable.Range(0, batch * tokens).Select(_ => (long)rng.Next(config.VocabSize)).ToArray(), [batch, tokens]);
        double logitsGiB = (double)batch * tokens * config.VocabSize * 4 / (1L << 30);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"[chunked-loss] batch {batch}x{tokens}, vocab {config.VocabSize}: full float32 logits {logitsGiB:F2} GiB"));
        // The smaller phase first: memory it leaves in the heap would only inflate the other's peak.
        var (chunkedLoss, chunkedPeak) = Phase("chunked", () => lora.LossSum(ids, null, ids), lora);
        var (plainLoss, plainPeak) = Phase("plain", () => CausalLmLoss.Sum(lora.Forward(ids), ids), lora);
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"[chunked-loss] | loss chunked {chunkedLoss:R} plain {plainLoss:R} (relative difference {Math.Abs(chunkedLoss - plainLoss) / plainLoss:E2}) | step peak above baseline: chunked {chunkedPeak:F2} GiB, plain {plainPeak:F2} GiB | peak RSS {chunkedPeak:F2} GiB chunked vs {plainPeak:F2} GiB plain"));
    }

    private static (double Loss, double PeakAboveGiB) Phase(string name, Func<(Tensor Sum, long Count)> lossSum, PeftModel lora)
    {
        double before = PeakMemory.StartPhase();
        var sw = Stopwatch.StartNew();
        double loss;
        using (NewDisposeScope())
        {
            var (sum, count) = lossSum();
            var mean = sum / count;
            loss = mean.item<float>();
            mean.backward();
        }
        double peak = PeakMemory.PeakRssGiB();
        foreach (var (_, p) in lora.TrainableParameters()) { using var g = p.grad; p.grad = null; }
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"[{name}] loss {loss:R}, {sw.Elapsed.TotalSeconds:F1} s, RSS before {before:F2} GiB, step peak RSS {peak:F2} GiB (+{peak - before:F2})"));
        return (loss, peak - before);
    }
}
