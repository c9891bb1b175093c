using static TorchSharp.torch;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// libtorch's intra-op thread count (<c>torch.set_num_threads</c>) for <see cref="LoraCausalLmOptions.NumberOfThreads"/>.
/// The setting is process-wide, so it is applied once where a CPU model is made (Fit, Load) and left in place for the
/// Transform and Predict calls that follow: restoring it after Fit would slow those down, and two Fits running at
/// once would restore each other's value. A CUDA model is not affected (its kernels do not use these threads).
/// </summary>
internal static class CpuThreads
{
    /// <summary>
    /// The automatic choice: half the processors this process may use (<see cref="Environment.ProcessorCount"/>, which
    /// follows CPU affinity and container limits), at least 1 and at most libtorch's own default (one per physical
    /// core). libtorch's default takes every core, and its threads wait for each other at every operation: when another
    /// process holds one core, each operation waits for the thread that shares it, and training ran 5 times slower
    /// than with 1 thread on a shared 2-core machine (docs/options.md). Half the cores leaves room for the others.
    /// </summary>
    public static int Automatic { get; } = Math.Max(1, Math.Min(get_num_threads(), Environment.ProcessorCount / 2));

    /// <summary>Sets the intra-op threads to <paramref name="requested"/> (null: <see cref="Automatic"/>) when <paramref name="device"/> is the CPU.</summary>
    public static void Apply(int? requested, string? device)
    {
        if (!string.IsNullOrWhiteSpace(device) && !device.Trim().Equals("cpu", StringComparison.OrdinalIgnoreCase)) return;
        int threads = requested ?? Automatic;
        if (get_num_threads() != threads) set_num_threads(threads);
    }
}
