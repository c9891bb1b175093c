using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// Bounds the cost of a forward pass before it is paid: every model of this library builds an additive attention mask
/// of [batch, 1, queries, keys] values in its dtype (BLOOM: [batch, heads, queries, keys], its ALiBi bias), so a
/// sequence of tens of thousands of tokens needs tens of GiB before the first layer runs. On the CPU, a mask larger
/// than the memory the machine has available is refused with an <see cref="InsufficientMemoryException"/> that gives
/// the sizes, instead of the kernel's out-of-memory kill. Only this one certain allocation is counted: the check never
/// refuses a pass that could run (the scores and activations come on top).
/// </summary>
internal static class AttentionBudget
{
    private static readonly AsyncLocal<long?> s_available = new();

    /// <summary>Bytes the machine can still give this process: MemAvailable of /proc/meminfo on Linux, else what .NET's GC sees.</summary>
    public static long AvailableBytes()
    {
        if (s_available.Value is long forced) return forced;
        try
        {
            if (OperatingSystem.IsLinux())
                foreach (var line in File.ReadLines("/proc/meminfo"))
                    if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { }
        return GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
    }

    /// <summary>Makes <see cref="AvailableBytes"/> return <paramref name="bytes"/> on this flow until disposed (tests).</summary>
    internal static IDisposable Pretend(long bytes)
    {
        var before = s_available.Value;
        s_available.Value = bytes;
        return new Undo(() => s_available.Value = before);
    }

    /// <summary>
    /// Throws when the mask of a pass over <paramref name="inputsEmbeds"/> [batch, queries, hidden] (the mask takes
    /// its dtype) attending to <paramref name="past"/> cached positions and its own does not fit.
    /// </summary>
    public static void Check(CausalLm model, Tensor inputsEmbeds, long past)
    {
        if (inputsEmbeds.device_type != DeviceType.CPU) return;
        var config = model.Config;
        long batch = inputsEmbeds.shape[0], queries = inputsEmbeds.shape[1], keys = past + queries;
        long heads = config.Architecture.Positions == PositionRule.Alibi ? config.NumHeads : 1;
        long element = inputsEmbeds.ElementSize;
        double bytes = (double)batch * heads * queries * keys * element;
        long available = AvailableBytes();
        if (bytes <= available) return;
        static string Size(double b) => b >= 1L << 30 ? $"{b / (1L << 30):F1} GiB" : $"{b / (1L << 20):F0} MiB";
        string shape = heads == 1 ? $"[{batch}, 1, {queries}, {keys}]" : $"[{batch}, {heads} heads, {queries}, {keys}] (ALiBi)";
        throw new InsufficientMemoryException(
            $"The {config.ModelType} model's attention mask for {batch} row(s) of {queries} tokens ({keys} attended positions) is {shape} × {element} bytes = {Size(bytes)}, " +
            $"more than the {Size(available)} this machine has available, before any layer runs. Use shorter sequences (TrainingOptions.MaxSequenceLength, " +
            "LoraTrainingOptions.MaxSequenceLength) or fewer rows at a time (BatchSize).");
    }
}
