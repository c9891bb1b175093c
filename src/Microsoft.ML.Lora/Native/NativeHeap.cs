using System.Runtime.InteropServices;

namespace Microsoft.ML.Lora.Native;

/// <summary>
/// Gives freed native heap memory back to the operating system. libtorch allocates activations and gradients with
/// malloc; glibc keeps freed blocks in its arenas, so a training loop's resident memory creeps up with fragmentation
/// although nothing is alive. malloc_trim releases those pages. A no-op where glibc is not the C library.
/// </summary>
internal static class NativeHeap
{
    private static bool _unavailable = !OperatingSystem.IsLinux();
    private static bool _noMallinfo = !OperatingSystem.IsLinux();

    [DllImport("libc.so.6", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(nuint pad);

    // glibc ≥ 2.33: the allocator's statistics summed over every arena, as size_t fields.
    [StructLayout(LayoutKind.Sequential)]
    private struct MallInfo2
    {
        public nuint Arena, Ordblks, Smblks, Hblks, Hblkhd, Usmblks, Fsmblks, Uordblks, Fordblks, Keepcost;
    }

    [DllImport("libc.so.6", EntryPoint = "mallinfo2")]
    private static extern MallInfo2 MallInfo();

    /// <summary>Releases every free page of the heap.</summary>
    public static void Trim()
    {
        if (_unavailable) return;
        try { MallocTrim(0); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { _unavailable = true; }
    }

    /// <summary>
    /// Releases the heap's free pages once more than <paramref name="freeBytes"/> are free in it. For loops whose
    /// temporaries are mixed with longer-lived blocks (the quantized layers' dequantized chunks between a step's saved
    /// activations): trimming after every product would pay a page fault for every reused page (a 7B NF4 step took
    /// twice as long), never trimming let the holes grow by 1.4 GiB in one step.
    /// </summary>
    public static void TrimWhenFree(long freeBytes)
    {
        if (_noMallinfo) { Trim(); return; }
        try
        {
            if ((long)MallInfo().Fordblks > freeBytes) Trim();
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            _noMallinfo = true; // glibc before 2.33 (or no glibc): trim every time
        }
    }
}
