namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>
/// <c>dotnet exec Microsoft.ML.Lora.Tests.dll reload-cycles ZIP N</c>: N times loads a saved model, predicts one row
/// with a PredictionEngine and disposes the engine and the model, then prints <c>RSS i MiB live</c> (VmRSS after a full
/// garbage collection, and the tensors not disposed before it). A process of its own, so that tests running in parallel do not move the number
/// (<see cref="ReloadMemoryTests"/>).
/// </summary>
internal static class ReloadCyclesProgram
{
    public const string Command = "reload-cycles";

    public static int Run(string[] args)
    {
        string zip = args[0];
        int cycles = int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture);
        var ml = new MLContext(seed: 1);
        for (int i = 1; i <= cycles; i++)
        {
            var model = ml.Model.Load(zip, out _);
            using (var engine = ml.Model.CreatePredictionEngine<Question, Answer>(model))
                engine.Predict(new Question { Prompt = "sky ->: " });
            ((IDisposable)model).Dispose();
            // Tensors made on this thread and not disposed (TorchSharp counts per thread, so tensors left to the
            // finalizer stay counted): deterministic, unlike RSS, which a collection hides.
            long live = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            Console.WriteLine(FormattableString.Invariant($"RSS {i} {RssMiB():F1} {live}"));
        }
        return 0;
    }

    private static double RssMiB() =>
        long.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal))
            .Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) / 1024.0;
}
