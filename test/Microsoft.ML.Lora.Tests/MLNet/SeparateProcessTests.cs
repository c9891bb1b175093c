using System.Diagnostics;

namespace Microsoft.ML.Lora.Tests.MLNet;

public sealed class SeparateProcessTests : MLNetTestBase
{
    [Fact]
    public async Task A_fresh_process_loads_the_model_without_registering_anything()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(3));
        string zip = Path.Combine(Root, "model.zip");
        using (var model = Trainer(ml).Fit(data))
            ml.Model.Save(model, data.Schema, zip);

        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { "exec", typeof(ModelLoadProgram).Assembly.Location, "load-model", zip, "hello" })
            start.ArgumentList.Add(arg);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        await process.WaitForExitAsync(timeout.Token);

        (process.ExitCode, await stdout + await stderr).Should().Be((0, "GENERATED:olleh|n3-r8" + Environment.NewLine));
    }
}
