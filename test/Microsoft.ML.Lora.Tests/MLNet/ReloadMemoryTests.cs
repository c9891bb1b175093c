using System.Diagnostics;
using Xunit.Abstractions;

namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>
/// Issue 14's leak: 30 reloads of a 50 MB model went from 260 to 691 MiB, because a disposed PredictionEngine kept a
/// reference to the weights. 50 load/predict/dispose cycles of a 13 MB model, in a process of their own: resident
/// memory after cycle 50 is within 40 MiB of cycle 10 (a leak of the weights alone would add about 500 MiB). The child
/// also prints the tensors not disposed by the time of each cycle's collection, for the record (the weights are, by
/// <see cref="DisposalTests"/>; about 69 loading temporaries per cycle are left to the finalizer).
/// </summary>
public sealed class ReloadMemoryTests : MLNetTestBase
{
    private readonly ITestOutputHelper _output;

    public ReloadMemoryTests(ITestOutputHelper output) => _output = output;

    [Fact]
    public async Task Fifty_load_predict_dispose_cycles_keep_resident_memory_flat()
    {
        if (!File.Exists("/proc/self/status")) return; // VmRSS is Linux's
        string baseModel = TinyBaseModel.Create(Path.Combine(Root, "tiny"), "bloom", hiddenSize: 256, layers: 4, heads: 4, seed: 1);
        long weights = Directory.GetFiles(baseModel, "*.safetensors").Sum(f => new FileInfo(f).Length);
        weights.Should().BeGreaterThan(12L << 20, "a leak of the weights must be far above the bound");
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new Row { Prompt = "sky ->: ", Completion = "blue" } });
        string zip = Path.Combine(Root, "model.zip");
        // A pipeline, as users save it: the loaded model is a TransformerChain, whose Dispose runs once.
        using (var model = ml.Transforms.CopyColumns("Copy", "Prompt").Append(ml.Lora().CausalLm(new LoraCausalLmOptions
        {
            BaseModelFolder = baseModel,
            Training = { MaxSteps = 1 },
            Generation = { MaxNewTokens = 2 },
        })).Fit(data))
            ml.Model.Save(model, data.Schema, zip);

        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[] { "exec", typeof(ModelLoadProgram).Assembly.Location, ReloadCyclesProgram.Command, zip, "50" })
            start.ArgumentList.Add(arg);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        await process.WaitForExitAsync(timeout.Token);
        string output = await stdout + await stderr;
        _output.WriteLine(output);
        process.ExitCode.Should().Be(0, output);

        var lines = output.Split('\n').Where(l => l.StartsWith("RSS ", StringComparison.Ordinal)).Select(l => l.Trim().Split(' ')).ToList();
        var rss = lines.ToDictionary(p => int.Parse(p[1]), p => double.Parse(p[2], System.Globalization.CultureInfo.InvariantCulture));
        rss.Should().HaveCount(50);
        (rss[50] - rss[10]).Should().BeLessThan(40, $"RSS after cycle 10: {rss[10]:F1} MiB, after cycle 50: {rss[50]:F1} MiB");
    }
}
