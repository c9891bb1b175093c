using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>Encode throughput of each fixture tokenizer on ~1 MB of text built from the fixture texts.</summary>
internal sealed class TokenizerBenchmark : IBenchmark
{
    public string Name => "tokenizers";
    public string Description => "encode throughput (MB/s, tokens/s) of the fixture tokenizers on ~1 MB of text";

    public void Run(string[] args)
    {
        var root = args.Length > 0 ? args[0] : FindFixtures();
        foreach (var name in new[] { "gpt2", "llama2", "llama3", "qwen3" })
        {
            var folder = Path.Combine(root, name);
            if (!Directory.Exists(folder)) { Console.WriteLine($"{name}: missing {folder}"); continue; }
            var load = Stopwatch.StartNew();
            var tokenizer = HfTokenizer.Load(folder);
            load.Stop();
            var text = BuildText(folder);
            var bytes = Encoding.UTF8.GetByteCount(text);
            tokenizer.Encode(text[..Math.Min(text.Length, 20_000)]); // warm-up (JIT, regex)
            var best = double.MaxValue;
            var tokens = 0;
            for (var run = 0; run < 3; run++)
            {
                var sw = Stopwatch.StartNew();
                tokens = tokenizer.Encode(text, addSpecialTokens: false).Length;
                best = Math.Min(best, sw.Elapsed.TotalSeconds);
            }
            Console.WriteLine($"{name,-7} load {load.Elapsed.TotalSeconds,5:F2} s  text {bytes / 1e6:F2} MB -> {tokens,7} tokens  " +
                $"encode {best * 1000,7:F0} ms  {bytes / 1e6 / best,6:F2} MB/s  {tokens / best,10:N0} tokens/s");
        }
        Console.WriteLine($"peak RSS {PeakMemory.PeakRssGiB():F2} GiB");
    }

    /// <summary>The fixture texts, in file order, one per line, repeated up to 1 MB: deterministic, mixed-script.</summary>
    private static string BuildText(string folder)
    {
        var texts = File.ReadLines(Path.Combine(folder, "cases.jsonl")).Where(l => l.Length > 0)
            .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("text").GetString()!)
            .Where(t => t.Length > 0).ToList();
        var sb = new StringBuilder();
        for (var i = 0; Encoding.UTF8.GetByteCount(sb.ToString()) < 1_000_000; i++)
        {
            for (var k = 0; k < 64; k++) sb.Append(texts[(i * 64 + k) % texts.Count]).Append('\n');
        }
        return sb.ToString();
    }

    private static string FindFixtures()
    {
        var env = Environment.GetEnvironmentVariable("MLLORA_FIXTURES");
        if (!string.IsNullOrEmpty(env)) return Path.Combine(env, "tokenizers");
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "fixtures", "tokenizers");
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException("shared/fixtures/tokenizers not found (set MLLORA_FIXTURES).");
    }
}
