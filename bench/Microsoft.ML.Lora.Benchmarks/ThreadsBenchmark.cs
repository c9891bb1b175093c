using System.Diagnostics;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// Fit time of the QuoteTagger-size tiny BLOOM (hidden 256, 4 layers, 8 heads) with LoraCausalLmOptions.NumberOfThreads
/// unset (automatic) and set. Start a competing CPU hog first (e.g. <c>taskset -c 0 yes &gt; /dev/null &amp;</c>) to
/// measure a shared machine. Arguments: settings (comma-separated, "auto" or a number; default "auto,1,2"), steps (default 20).
/// </summary>
internal sealed class ThreadsBenchmark : IBenchmark
{
    public string Name => "threads";
    public string Description => "Fit time per NumberOfThreads setting (auto, 1, 2, ...); run beside a CPU hog to see a shared machine";

    public void Run(string[] args)
    {
        var settings = (args.Length > 0 ? args[0] : "auto,1,2").Split(',').Select(s => s == "auto" ? (int?)null : int.Parse(s)).ToList();
        int steps = args.Length > 1 ? int.Parse(args[1]) : 20;
        string folder = Path.Combine(Path.GetTempPath(), "mllora-threads-" + Guid.NewGuid().ToString("N"));
        try
        {
            string baseModel = TinyBaseModel.Create(folder, "bloom", hiddenSize: 256, layers: 4, heads: 8, seed: 0);
            var ml = new MLContext(seed: 0);
            var rows = Enumerable.Range(0, 32).Select(i => new Row { Prompt = $"quote number {i} about life and time ->: ", Completion = "life, time, wisdom" }).ToArray();
            var data = ml.Data.LoadFromEnumerable(rows);
            Console.WriteLine($"libtorch default threads: {CpuThreadsProbe.Default}, Environment.ProcessorCount {Environment.ProcessorCount}, load average {File.ReadAllText("/proc/loadavg").Trim()}");
            foreach (var threads in settings.Prepend(settings[0])) // the first setting twice: warm-up
            {
                var sw = Stopwatch.StartNew();
                using var model = ml.Lora().CausalLm(new LoraCausalLmOptions
                {
                    BaseModelFolder = baseModel,
                    Seed = 0,
                    NumberOfThreads = threads,
                    Training = { MaxSteps = steps, BatchSize = 8, LearningRate = 5e-3f },
                }).Fit(data);
                Console.WriteLine(FormattableString.Invariant($"threads {(threads?.ToString() ?? "auto"),-5} (libtorch {TorchSharp.torch.get_num_threads()}): Fit {sw.Elapsed.TotalSeconds:F2} s for {steps} steps"));
            }
        }
        finally { try { Directory.Delete(folder, true); } catch (IOException) { } }
    }

    private sealed class Row { public string Prompt { get; set; } = ""; public string Completion { get; set; } = ""; }

    private static class CpuThreadsProbe { public static readonly int Default = TorchSharp.torch.get_num_threads(); }
}
