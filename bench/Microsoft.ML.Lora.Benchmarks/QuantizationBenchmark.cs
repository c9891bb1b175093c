using System.Diagnostics;
using System.Globalization;
using Microsoft.ML.Lora.Quantization;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// The quantization arithmetic on one BLOOM-7b1 dense_h_to_4h weight (16,384 × 4,096 bfloat16, random normal · 0.02):
/// the time to quantize it (what loading in 8 or 4 bits pays per matrix), to dequantize it to bfloat16 (what each
/// forward and backward pass pays), and the bfloat16 product of 64 tokens with it, for scale. The 7B model has 90 such
/// matrices' worth of linear weights (6.04 B values). Args: [--rows N] [--cols N] [--repeat N].
/// </summary>
internal sealed class QuantizationBenchmark : IBenchmark
{
    public string Name => "quantization";
    public string Description => "quantize / dequantize one 16384x4096 bf16 weight in int8, nf4 (double quant), fp4 ([--rows N] [--cols N] [--repeat N])";

    public void Run(string[] args)
    {
        long rows = 16384, cols = 4096;
        int repeat = 3;
        for (int i = 0; i + 1 < args.Length; i++)
        {
            if (args[i] == "--rows") rows = long.Parse(args[i + 1], CultureInfo.InvariantCulture);
            if (args[i] == "--cols") cols = long.Parse(args[i + 1], CultureInfo.InvariantCulture);
            if (args[i] == "--repeat") repeat = int.Parse(args[i + 1], CultureInfo.InvariantCulture);
        }
        using var gen = new Generator(0);
        using var w = (randn([rows, cols], generator: gen) * 0.02).to_type(ScalarType.BFloat16);
        using var x = randn([64, cols], generator: gen).to_type(ScalarType.BFloat16);
        double perModel = 6.04e9 / (rows * cols);
        Console.WriteLine($"weight [{rows}, {cols}] bf16, threads {get_num_threads()}; x {perModel:F1} for the 7B model's linear weights");
        Console.WriteLine("| what | ms per matrix | s per 7B model |");
        Console.WriteLine("| --- | --- | --- |");
        void Report(string what, Action action)
        {
            action(); // warm-up
            var sw = Stopwatch.StartNew();
            for (int r = 0; r < repeat; r++) action();
            double ms = sw.Elapsed.TotalMilliseconds / repeat;
            Console.WriteLine($"| {what} | {ms:F0} | {ms * perModel / 1000:F1} |");
        }
        Report("bf16 product x[64] · Wᵀ", () => { using var y = nn.functional.linear(x, w); });
        Report("int8 quantize", () => { var (q, s) = Int8Weight.Quantize(w); q.Dispose(); s.Dispose(); });
        var (q8, scb) = Int8Weight.Quantize(w);
        Report("int8 dequantize to bf16", () => { using var d = Int8Weight.Dequantize(q8, scb, ScalarType.BFloat16); });
        foreach (var type in new[] { "nf4", "fp4" })
        {
            Report($"{type} quantize (double quant)", () => { using var s = QuantState4Bit.Quantize(w, type, doubleQuant: true); });
            using var state = QuantState4Bit.Quantize(w, type, doubleQuant: true);
            Report($"{type} dequantize to bf16", () => { using var d = state.Dequantize(ScalarType.BFloat16); });
        }
        q8.Dispose(); scb.Dispose();
    }
}
