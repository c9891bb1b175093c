using Microsoft.ML.Lora.Models.Layers;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using static TorchSharp.torch;
using Generator = Microsoft.ML.Lora.Generation.Generator;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Greedy decoding with the KV cache, batch 1, 8-token prompt, 64 new tokens, float32 CPU, random weights, on the
/// GPT-2-small shape and on a 4-layer 256-wide GPT-2; tokens/s over the whole generate call (prefill included), best of 3.
/// Args: [N new tokens] [--threads N] [--dtype float32|bfloat16] [--float32-arithmetic] (one precision per process, so
/// that the peak RSS is that precision's).
/// </summary>
internal sealed class GenerationBenchmark : IBenchmark
{
    public string Name => "generation";
    public string Description => "tokens/s, KV cache, batch 1, 64 new tokens (GPT-2-small shape and 4x256), peak RSS";

    private static readonly (string name, int width, int layers, int heads, double hfTokensPerSecond)[] Shapes =
    [
        ("gpt2-small 768x12", 768, 12, 12, 19.3),
        ("gpt2 256x4", 256, 4, 4, 136),
    ];

    public void Run(string[] args)
    {
        int newTokens = args.Length > 0 && int.TryParse(args[0], out int n) ? n : 64;
        int threadsAt = Array.IndexOf(args, "--threads");
        if (threadsAt >= 0) set_num_threads(int.Parse(args[threadsAt + 1]));
        int dtypeAt = Array.IndexOf(args, "--dtype");
        var dtype = dtypeAt >= 0 && args[dtypeAt + 1] is "bfloat16" or "bf16" ? ScalarType.BFloat16 : ScalarType.Float32;
        bool float32Arithmetic = args.Contains("--float32-arithmetic");
        Console.WriteLine($"threads {get_num_threads()}, {newTokens} new tokens, prompt 8, weights {dtype}{(float32Arithmetic ? ", float32 arithmetic" : "")}");
        foreach (var (name, width, layers, heads, hf) in Shapes)
        {
            var config = ModelConfig.Parse(new JsonObject
            {
                ["model_type"] = "gpt2", ["vocab_size"] = 50257, ["n_embd"] = width, ["n_layer"] = layers, ["n_head"] = heads,
                ["n_positions"] = 1024, ["activation_function"] = "gelu_new", ["eos_token_id"] = 50256,
            });
            using var model = ModelFactory.CreateRandom(config, seed: 1, dtype);
            model.Float32Arithmetic = float32Arithmetic;
            var generator = new Generator(model);
            var options = new GenerationOptions { MaxNewTokens = newTokens, EosTokenIds = [] };
            int[] prompt = [464, 2068, 7586, 21831, 18045, 625, 262, 16931];
            generator.Generate(prompt, options with { MaxNewTokens = 4 }); // warm-up
            if (args.Contains("--profile"))
            {
                using var ng = no_grad();
                using var ids = tensor(prompt.Select(i => (long)i).ToArray(), [1, prompt.Length]);
                var sw0 = Stopwatch.StartNew();
                for (int i = 0; i < 10; i++) { using var s0 = NewDisposeScope(); model.Forward(ids); }
                Console.WriteLine($"  forward T=8 no cache: {sw0.Elapsed.TotalMilliseconds / 10:F1} ms");
                using var one = ids[.., ..1];
                sw0.Restart();
                for (int i = 0; i < 10; i++) { using var s0 = NewDisposeScope(); model.Forward(one); }
                Console.WriteLine($"  forward T=1 no cache: {sw0.Elapsed.TotalMilliseconds / 10:F1} ms");
                var w = EmbeddingWeight.Of(((Gpt2ForCausalLm)model).transformer.wte);
                using var hdn = randn(1, 1, width);
                sw0.Restart();
                for (int i = 0; i < 10; i++) { using var s0 = NewDisposeScope(); nn.functional.linear(hdn, w); }
                Console.WriteLine($"  lm_head T=1: {sw0.Elapsed.TotalMilliseconds / 10:F1} ms");
            }
            double best = 0;
            for (int run = 0; run < 3; run++)
            {
                var sw = Stopwatch.StartNew();
                var tokens = generator.Generate(prompt, options);
                sw.Stop();
                if (tokens.Count != newTokens) throw new InvalidOperationException($"generated {tokens.Count} tokens");
                best = Math.Max(best, newTokens / sw.Elapsed.TotalSeconds);
            }
            Console.WriteLine($"{name,-18} {best,8:F1} tokens/s   HF CPU {hf,6:F1} tokens/s   ratio {best / hf:F2}x   peak RSS {PeakMemory.PeakRssGiB():F2} GiB");
        }
    }
}
