using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace Microsoft.ML.Lora.Native;

/// <summary>
/// Starts TorchSharp's native backend and, when it cannot start, says what is missing. TorchSharp reports every
/// failure of its native load the same way ("doesn't contain a reference to libtorch-cpu-linux-x64"), also when the
/// runtime is there but the system's libstdc++ is too old; the loader's own error (dlerror) tells the causes apart, so
/// it is read by loading libLibTorchSharp from the application's folder once more.
/// </summary>
internal static partial class NativeRuntime
{
    /// <summary>Runs TorchSharp's static initialisation (which loads libtorch); throws the explained error when it fails.</summary>
    /// <param name="device">The device asked for, named in the message ("cpu", "cuda:0").</param>
    public static void EnsureLoaded(string device)
    {
        try
        {
            RuntimeHelpers.RunClassConstructor(typeof(TorchSharp.torch).TypeHandle);
        }
        catch (TypeInitializationException e)
        {
            throw new InvalidOperationException(Describe(device, Text(e), ProbeLoader()), e);
        }
    }

    /// <summary>
    /// The message for a failed native load, from TorchSharp's exception text and the loader's error. Pure: the
    /// classification the tests check.
    /// </summary>
    /// <param name="device">The device asked for.</param>
    /// <param name="failure">Messages of TorchSharp's exception and its inner exceptions.</param>
    /// <param name="loaderError">The error of loading libLibTorchSharp directly, or null when it was not found or loaded.</param>
    internal static string Describe(string device, string failure, string? loaderError)
    {
        string both = failure + "\n" + loaderError;
        string version = TorchSharpVersion();
        // .NET's DllNotFoundException puts the loader's own words (dlerror) on its last line.
        string detail = loaderError is null ? "" : $" Loader: {LastLine(loaderError)}";

        if (GlibcxxNotFound().Match(both) is { Success: true } glibcxx)
            return $"TorchSharp's native library needs {glibcxx.Groups[1].Value} of libstdc++ (GCC 13 or newer), which this system's " +
                   "libstdc++ does not provide (Debian 12, Ubuntu 22.04), and the build step of Microsoft.ML.Lora that fixes the copy in " +
                   "the application's output folder did not run: reference the Microsoft.ML.Lora package (its build targets run it), or, " +
                   "with a ProjectReference to the library, add <Import Project=\"<clone>/src/Microsoft.ML.Lora/build/Microsoft.ML.Lora.targets\" /> " +
                   "to the application's project; check that MLLoraSkipNativeFix is not set; then rebuild. See docs/debian12.md." + detail;

        if (CudaMissing().IsMatch(both))
            return $"Device '{device}' needs TorchSharp's CUDA runtime, which did not start: reference TorchSharp-cuda-linux or " +
                   $"TorchSharp-cuda-windows {version} (and not TorchSharp-cpu), and check that the NVIDIA driver is installed " +
                   "(nvidia-smi); or use device 'cpu'. See docs/runtime.md." + detail;

        if (RuntimeMissing().IsMatch(both))
            return $"TorchSharp's native runtime (libtorch) is not in the application: reference exactly one runtime package of " +
                   $"version {version}, <PackageReference Include=\"TorchSharp-cpu\" Version=\"{version}\" /> (or TorchSharp-cuda-linux / " +
                   "TorchSharp-cuda-windows for CUDA). Microsoft.ML.Lora references only the managed TorchSharp package. See docs/runtime.md." + detail;

        return $"TorchSharp's native runtime could not be loaded for device '{device}': {FirstLine(failure)} See docs/runtime.md.{detail}";
    }

    /// <summary>The messages of an exception and its inner exceptions, outermost first.</summary>
    internal static string Text(Exception e)
    {
        var lines = new List<string>();
        for (Exception? x = e; x != null; x = x.InnerException) lines.Add(x.Message);
        return string.Join("\n", lines);
    }

    /// <summary>
    /// Loads libLibTorchSharp from where the application's build put it (its folder, or runtimes/RID/native/); the
    /// loader's error, or null when it is absent or loads. Folders TorchSharp fills itself on a failed load (cpu/, cuda/)
    /// are not looked at: their copy was never fixed by the build.
    /// </summary>
    private static string? ProbeLoader()
    {
        string name = OperatingSystem.IsWindows() ? "LibTorchSharp.dll" : OperatingSystem.IsMacOS() ? "libLibTorchSharp.dylib" : "libLibTorchSharp.so";
        string root = AppContext.BaseDirectory;
        string os = OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux";
        string rid = os + "-" + RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant();
        string[] candidates = [Path.Combine(root, name), Path.Combine(root, "runtimes", rid, "native", name)];
        string? path = candidates.FirstOrDefault(File.Exists);
        if (path is null) return null;
        try
        {
            NativeLibrary.Load(path);
            return null;
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            return e.Message;
        }
    }

    private static string TorchSharpVersion() =>
        typeof(TorchSharp.torch).Assembly.GetName().Version is { } v ? $"{v.Major}.{v.Minor}.{v.Build}" : "of TorchSharp's version";

    private static string FirstLine(string text) => text.Split('\n')[0].Trim();

    private static string LastLine(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).LastOrDefault() ?? "";

    [GeneratedRegex(@"(GLIBCXX_[0-9][0-9.]*)'? not found")]
    private static partial Regex GlibcxxNotFound();

    // libcuda.so.1 is the driver; the others are libraries of the CUDA runtime packages.
    [GeneratedRegex(@"libcuda\.so|libcudart|libcudnn|libnvrtc|libtorch_cuda|libtorch-cuda|device type CUDA", RegexOptions.IgnoreCase)]
    private static partial Regex CudaMissing();

    [GeneratedRegex(@"doesn't contain a reference to libtorch|libtorch(_cpu)?\.so[^:\n]*: cannot open shared object file|libtorch[^ \n]*\.dll", RegexOptions.IgnoreCase)]
    private static partial Regex RuntimeMissing();
}
