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

    [DllImport("libc.so.6", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(nuint pad);

    public static void Trim()
    {
        if (_unavailable) return;
        try { MallocTrim(0); }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { _unavailable = true; }
    }
}
