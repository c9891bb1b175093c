using System.Diagnostics;
using Microsoft.ML.Lora.Models.Layers;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// One linear layer three ways: float32 weights, bfloat16 weights (bfloat16 result), and bfloat16 weights in float32
/// arithmetic (Precision.Float32Linear); milliseconds per call and relative error against the float64 product of the
/// same weights, on LLaMA-family MLP shapes (TinyLlama 2048→5632, BLOOM-560m 1024→4096) for 1, 64 and 512 rows.
/// </summary>
internal sealed class PrecisionBenchmark : IBenchmark
{
    public string Name => "precision";
    public string Description => "linear layer ms + error: float32, bfloat16, bfloat16 with float32 arithmetic (1/64/512 rows)";

    public void Run(string[] args)
    {
        using var _ = no_grad();
        Console.WriteLine($"threads {get_num_threads()}");
        Console.WriteLine($"{"shape",-12} {"rows",5} {"float32 ms",11} {"bf16 ms",9} {"bf16+f32 ms",12} {"vs float32",11} {"bf16 error",11} {"bf16+f32 error",15}");
        foreach (var (inF, outF) in new[] { (2048L, 5632L), (1024L, 4096L) })
            foreach (var rows in new[] { 1L, 64L, 512L })
            {
                using var scope = NewDisposeScope();
                var w32 = randn(outF, inF) * 0.02;
                var w16 = w32.to_type(ScalarType.BFloat16);
                w32 = w16.to_type(ScalarType.Float32); // the same weights in both
                var x = randn(rows, inF);
                double f32 = Time(() => nn.functional.linear(x, w32), rows);
                double bf16 = Time(() => nn.functional.linear(x.to_type(ScalarType.BFloat16), w16), rows);
                double mixed = Time(() => Precision.Float32Linear(x, w16, null), rows);
                var exact = nn.functional.linear(x.to_type(ScalarType.Float64), w16.to_type(ScalarType.Float64));
                double Err(Tensor y) => ((y.to_type(ScalarType.Float64) - exact).norm() / exact.norm()).item<double>();
                double errBf16 = Err(nn.functional.linear(x.to_type(ScalarType.BFloat16), w16)), errMixed = Err(Precision.Float32Linear(x, w16, null));
                Console.WriteLine($"{$"{inF}x{outF}",-12} {rows,5} {f32,11:F2} {bf16,9:F2} {mixed,12:F2} {f32 / mixed,10:F2}x {errBf16,11:E1} {errMixed,15:E1}");
            }
    }

    /// <summary>Milliseconds per call, best of 3 rounds after a warm-up.</summary>
    private static double Time(Func<Tensor> f, long rows)
    {
        int n = rows >= 512 ? 5 : 30;
        double best = double.MaxValue;
        for (int round = 0; round < 4; round++)
        {
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < n; i++) { using var s = NewDisposeScope(); f(); }
            if (round > 0) best = Math.Min(best, sw.Elapsed.TotalMilliseconds / n);
        }
        return best;
    }
}
