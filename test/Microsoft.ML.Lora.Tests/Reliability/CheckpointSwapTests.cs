using System.Diagnostics;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Tests.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// Re-saving checkpoint-N: at every instant the old or the new complete folder is there under its name; what a
/// killed save left (NAME.tmp-PID, NAME.old-PID) is repaired or removed by the next save or resume.
/// </summary>
public sealed class CheckpointSwapTests
{
    private static Trainer NewTrainer() => new(
        PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig(hidden: 16, layers: 1), seed: 2), new LoraConfig { R = 2, LoraAlpha = 4, TargetModules = [LoraConfig.AllLinear] }),
        new TrainingOptions { LearningRate = 1e-3, MaxSteps = 4, Seed = 3 });

    /// <summary>The id of a process that has exited: what a killed trainer left behind carries one.</summary>
    private static int DeadPid()
    {
        using var p = Process.Start(new ProcessStartInfo("dotnet", "--version") { RedirectStandardOutput = true, UseShellExecute = false })!;
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return p.Id;
    }

    private static readonly string[] CheckpointFiles = [PeftAdapterIO.ConfigFile, PeftAdapterIO.WeightsFile, Trainer.OptimizerFile, TrainerState.FileName];

    [Fact]
    public async Task A_reader_polling_during_50_re_saves_always_finds_a_complete_checkpoint()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        using var trainer = NewTrainer();
        string folder = temp.File("checkpoint-4");
        trainer.SaveCheckpoint(folder, totalSteps: 4);

        int checks = 0; string? missing = null;
        using var stop = new CancellationTokenSource();
        var reader = Task.Factory.StartNew(() =>
        {
            while (!stop.IsCancellationRequested && missing is null)
            {
                foreach (var f in CheckpointFiles)
                    if (!File.Exists(Path.Combine(folder, f))) { missing = $"{f} missing after {checks} checks"; break; }
                checks++;
            }
        }, TaskCreationOptions.LongRunning);
        for (int i = 0; i < 50 && missing is null; i++) trainer.SaveCheckpoint(folder, totalSteps: 4);
        stop.Cancel();
        await reader;

        missing.Should().BeNull();
        checks.Should().BeGreaterThan(50);
        Directory.GetFileSystemEntries(temp.Path).Select(Path.GetFileName).Should().Equal("checkpoint-4");
    }

    [Fact]
    public void A_kill_between_the_two_renames_is_repaired_by_resume_and_leftovers_are_removed_by_the_next_save()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        using var trainer = NewTrainer();
        string folder = temp.File("checkpoint-4");
        trainer.SaveCheckpoint(folder, totalSteps: 4);
        int dead = DeadPid();
        // What a save killed after moving the old folder aside and before moving the new one in leaves behind.
        Directory.Move(folder, $"{folder}.old-{dead}");
        Directory.CreateDirectory($"{folder}.tmp-{dead}");
        File.WriteAllText(Path.Combine($"{folder}.tmp-{dead}", PeftAdapterIO.WeightsFile), "half");

        using var resumed = NewTrainer();
        resumed.Resume(folder, expectedTotalSteps: 4);

        resumed.GlobalStep.Should().Be(0);
        Directory.GetFileSystemEntries(temp.Path).Select(Path.GetFileName).Should().Equal("checkpoint-4");
        Directory.GetFiles(folder).Select(Path.GetFileName).Order().Should().Equal(CheckpointFiles.Order());
    }

    [Fact]
    public void The_next_save_removes_the_temporaries_of_killed_saves()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        using var trainer = NewTrainer();
        string folder = temp.File("checkpoint-4");
        trainer.SaveCheckpoint(folder, totalSteps: 4);
        int dead = DeadPid();
        Directory.CreateDirectory($"{folder}.tmp-{dead}");
        Directory.CreateDirectory($"{folder}.old-{dead}");

        trainer.SaveCheckpoint(folder, totalSteps: 4);

        Directory.GetFileSystemEntries(temp.Path).Select(Path.GetFileName).Should().Equal("checkpoint-4");
    }
}
