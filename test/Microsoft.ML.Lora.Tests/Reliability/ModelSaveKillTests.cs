using Microsoft.ML.Data;
using System.Diagnostics;
using Microsoft.ML.Lora.Tests.MLNet;
using Microsoft.ML.Lora.Tests.Native;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// <c>mlContext.Model.SaveAtomically</c> over an existing model zip: a save killed at any point, or one that runs
/// out of disk, leaves the old zip loadable (ML.NET's path overload truncates it first and loses it).
/// </summary>
public sealed class ModelSaveKillTests : MLNetTestBase
{
    private const int OldRows = 3, NewRows = 5;

    internal static Row[] SaveRows(int count) => Enumerable.Range(0, count)
        .Select(i => new Row { Prompt = $"question {i}", Completion = $"answer {i}" }).ToArray();

    internal static Microsoft.ML.Lora.LoraCausalLmTrainer Trainer(MLContext ml, string baseFolder, string output = "GeneratedText") =>
        ml.Lora().CausalLm(new Microsoft.ML.Lora.LoraCausalLmOptions { BaseModelFolder = baseFolder, Seed = 4, OutputColumnName = output },
            new FakeTextGeneratorFactory());

    /// <summary>The fake backend's output for "hi" of a model fitted on <paramref name="rows"/> rows.</summary>
    private static string Expected(int rows) => FakeTextGenerator.Complete("hi", $"n{rows}-r8");

    private string Zip => Path.Combine(Root, "model.zip");

    private void SaveOldModel()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(SaveRows(OldRows));
        using var model = Trainer(ml, BaseFolder).Fit(data);
        ml.Model.SaveAtomically(model, data.Schema, Zip);
    }

    /// <summary>What the zip generates for "hi"; throws when it does not load.</summary>
    private string LoadAndGenerate()
    {
        var ml = new MLContext(seed: 2);
        var model = ml.Model.Load(Zip, out _);
        try { return model.Transform(ml.Data.LoadFromEnumerable(new[] { new Question { Prompt = "hi" } })).GetColumn<string>("GeneratedText").Single(); }
        finally { (model as IDisposable)?.Dispose(); }
    }

    private ProcessStartInfo Child(string mode, string repeat, string? shellPrefix = null, int models = 1)
    {
        string[] args = ["exec", typeof(ModelSaveProgram).Assembly.Location, ModelSaveProgram.Command, Zip, BaseFolder, NewRows.ToString(), mode, repeat, models.ToString()];
        var start = shellPrefix is null ? new ProcessStartInfo("dotnet") : new ProcessStartInfo("bash");
        if (shellPrefix is null) foreach (var a in args) start.ArgumentList.Add(a);
        else
        {
            start.ArgumentList.Add("-c");
            start.ArgumentList.Add(shellPrefix + "; exec dotnet " + string.Join(' ', args.Select(a => "'" + a + "'")));
        }
        start.RedirectStandardOutput = true;
        start.RedirectStandardError = true;
        start.UseShellExecute = false;
        return start;
    }

    private static readonly int[] KillDelaysMs = [0, 1, 3, 7, 15, 31];

    [Fact]
    public void A_save_killed_at_several_points_leaves_the_old_or_the_new_zip_loadable_never_a_broken_one()
    {
        SaveOldModel();
        LoadAndGenerate().Should().Be(Expected(OldRows));
        var seen = new List<string>();
        foreach (int delay in KillDelaysMs)
        {
            using (var child = Process.Start(Child("atomic", "loop"))!)
            {
                try
                {
                    string? line;
                    while ((line = child.StandardOutput.ReadLine()) != "SAVING")
                        if (line is null) throw new Xunit.Sdk.XunitException("The child exited before saving: " + child.StandardError.ReadToEnd());
                    Thread.Sleep(delay);
                }
                finally
                {
                    child.Kill(entireProcessTree: true);
                    child.WaitForExit();
                }
            }
            string generated;
            try { generated = LoadAndGenerate(); }
            catch (Exception e) { throw new Xunit.Sdk.XunitException($"After a kill {delay} ms into the saves the zip ({new FileInfo(Zip).Length} bytes) does not load: {e.GetType().Name}: {e.Message}"); }
            generated.Should().BeOneOf(Expected(OldRows), Expected(NewRows));
            seen.Add(generated);
        }

        // The next save removes the temporaries of the killed ones.
        SaveOldModel();
        Directory.GetFiles(Root).Select(Path.GetFileName).Should().Equal("model.zip");
    }

    [LinuxFact]
    public void A_save_onto_a_full_disk_fails_and_leaves_the_old_zip_loadable()
    {
        SaveOldModel();
        long oldLength = new FileInfo(Zip).Length;

        // A file-size limit of 400 KiB stands for a full disk: the new zip holds two 300 kB adapters (each written to a
        // temporary folder first, which fits). With SIGXFSZ ignored the write fails with EFBIG, as one fails with
        // ENOSPC. W^X off: the runtime's double-mapped code heap is a file that the limit would refuse.
        var start = Child("atomic", "once", "trap '' XFSZ; ulimit -f 400", models: 2);
        start.Environment["DOTNET_EnableWriteXorExecute"] = "0";
        using var child = Process.Start(start)!;
        string stdout = child.StandardOutput.ReadToEnd();
        child.WaitForExit();

        stdout.Should().Contain("SAVING");
        child.ExitCode.Should().NotBe(0, "the save cannot fit: " + stdout);
        new FileInfo(Zip).Length.Should().Be(oldLength);
        LoadAndGenerate().Should().Be(Expected(OldRows));
        Directory.GetFiles(Root).Select(Path.GetFileName).Should().Equal("model.zip");
    }
}
