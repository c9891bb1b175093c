namespace Microsoft.ML.Lora.Benchmarks;

internal static class PeakMemory
{
    /// <summary>Peak resident set size of this process (VmHWM), in GiB; NaN where /proc is missing.</summary>
    public static double PeakRssGiB() => StatusMiB("VmHWM:") / 1024.0;

    /// <summary>Current resident set size (VmRSS), in MiB.</summary>
    public static double RssMiB() => StatusMiB("VmRSS:");

    /// <summary>A kB line of /proc/self/status (VmRSS:, RssAnon:, RssFile:), in MiB; NaN where missing.</summary>
    public static double StatusMiB(string key)
    {
        const string status = "/proc/self/status";
        var line = File.Exists(status) ? File.ReadLines(status).FirstOrDefault(l => l.StartsWith(key)) : null;
        return line is null ? double.NaN : long.Parse(line.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0; // "VmHWM:\t13800000 kB": a tab, and no space once the value has 8 digits
    }

    /// <summary>Resets the peak (VmHWM) to the current RSS (Linux's clear_refs 5), so a phase's own peak can be read; no-op elsewhere.</summary>
    public static void ResetPeak()
    {
        const string clearRefs = "/proc/self/clear_refs";
        if (File.Exists(clearRefs)) File.WriteAllText(clearRefs, "5");
    }

    /// <summary>
    /// Starts measuring a phase: collects managed garbage, returns freed native memory to the system, resets the peak
    /// and returns the RSS now (GiB), the baseline the phase's peak is read against.
    /// </summary>
    public static double StartPhase()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Native.NativeHeap.Trim();
        ResetPeak();
        return RssMiB() / 1024;
    }
}
