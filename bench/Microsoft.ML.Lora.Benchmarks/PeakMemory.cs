namespace Microsoft.ML.Lora.Benchmarks;

internal static class PeakMemory
{
    /// <summary>Peak resident set size of this process (VmHWM), in GiB; NaN where /proc is missing.</summary>
    public static double PeakRssGiB()
    {
        const string status = "/proc/self/status";
        if (!File.Exists(status)) return double.NaN;
        var line = File.ReadLines(status).FirstOrDefault(l => l.StartsWith("VmHWM:"));
        return line is null ? double.NaN : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0 / 1024.0;
    }

    /// <summary>Current resident set size (VmRSS), in MiB.</summary>
    public static double RssMiB()
    {
        var line = File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("VmRSS:"));
        return line is null ? double.NaN : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0;
    }
}
