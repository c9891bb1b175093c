using Microsoft.ML.Lora.Native;

namespace Microsoft.ML.Lora.Tests.Native;

/// <summary>
/// The message for a native load failure, from the texts TorchSharp 0.107 and the loader give (copied from real
/// failures on Debian 12: an app without TorchSharp-cpu, and one whose libLibTorchSharp.so was left unpatched).
/// TorchSharp says the same in both cases; the loader's error tells them apart.
/// </summary>
public sealed class NativeRuntimeTests
{
    private const string TorchSharpCpuFailure =
        "The type initializer for 'TorchSharp.torch' threw an exception.\n" +
        "This application or script uses TorchSharp but doesn't contain a reference to libtorch-cpu-linux-x64, Version=2.10.0.0.\n\n" +
        "Consider referencing one of the combination packages TorchSharp-cpu, TorchSharp-cuda-linux, TorchSharp-cuda-windows or call " +
        "System.Runtime.InteropServices.NativeLibrary.Load(path-to-libLibTorchSharp.so) explicitly for a Python install of pytorch.\n\n" +
        "For CUDA, you may need to call 'TorchSharp.torch.InitializeDeviceType(TorchSharp.DeviceType.CUDA)' before any use of TorchSharp CUDA packages.\n" +
        "TorchSharp: LoadNativeBackend: Initialising native backend, useCudaBackend = False";

    private const string LoaderPrefix =
        "Unable to load shared library '/app/bin/runtimes/linux-x64/native/libLibTorchSharp.so' or one of its dependencies. In order to help " +
        "diagnose loading problems, consider using a tool like strace. If you're using glibc, consider setting the LD_DEBUG environment variable: \n";

    [Fact]
    public void Missing_libtorch_names_the_runtime_package_to_reference()
    {
        string message = NativeRuntime.Describe("cpu", TorchSharpCpuFailure, LoaderPrefix + "libtorch.so: cannot open shared object file: No such file or directory");
        message.Should().StartWith("TorchSharp's native runtime (libtorch) is not in the application")
            .And.Contain("<PackageReference Include=\"TorchSharp-cpu\" Version=\"0.107.0\" />")
            .And.EndWith("Loader: libtorch.so: cannot open shared object file: No such file or directory")
            .And.NotContain("is not a device");
    }

    [Fact]
    public void Missing_libtorch_is_recognised_from_TorchSharps_text_alone()
    {
        NativeRuntime.Describe("cpu", TorchSharpCpuFailure, loaderError: null)
            .Should().StartWith("TorchSharp's native runtime (libtorch) is not in the application").And.NotContain("Loader:");
    }

    [Fact]
    public void Old_libstdcxx_names_the_missing_version_and_the_build_fix_though_TorchSharp_blames_the_runtime()
    {
        string loader = "/lib/x86_64-linux-gnu/libstdc++.so.6: version `GLIBCXX_3.4.32' not found (required by /app/bin/runtimes/linux-x64/native/libLibTorchSharp.so)";
        string message = NativeRuntime.Describe("cpu", TorchSharpCpuFailure, LoaderPrefix + loader);
        message.Should().StartWith("TorchSharp's native library needs GLIBCXX_3.4.32 of libstdc++")
            .And.Contain("build/Microsoft.ML.Lora.targets").And.Contain("MLLoraSkipNativeFix").And.Contain("docs/debian12.md")
            .And.EndWith("Loader: " + loader);
    }

    [Fact]
    public void A_later_GLIBCXX_version_is_named_as_the_loader_gives_it()
    {
        NativeRuntime.Describe("cpu", "x", "libstdc++.so.6: version `GLIBCXX_3.4.33' not found (required by libtorch_cpu.so)")
            .Should().StartWith("TorchSharp's native library needs GLIBCXX_3.4.33 of libstdc++");
    }

    [Theory]
    [InlineData("This application or script uses TorchSharp but doesn't contain a reference to libtorch-cuda-12.8-linux-x64, Version=2.10.0.0.", null)]
    [InlineData("Torch device type CUDA did not initialise on the current machine.", null)]
    [InlineData("x", "libcuda.so.1: cannot open shared object file: No such file or directory")]
    public void Cuda_failures_name_the_CUDA_runtime_packages_and_the_driver(string failure, string? loader)
    {
        NativeRuntime.Describe("cuda:0", failure, loader).Should().StartWith("Device 'cuda:0' needs TorchSharp's CUDA runtime, which did not start")
            .And.Contain("TorchSharp-cuda-linux").And.Contain("nvidia-smi");
    }

    [Fact]
    public void Anything_else_keeps_TorchSharps_first_line_and_the_loader_error()
    {
        NativeRuntime.Describe("cpu", "Something odd happened.\nsecond line", LoaderPrefix + "libfoo.so: wrong ELF class: ELFCLASS32")
            .Should().Be("TorchSharp's native runtime could not be loaded for device 'cpu': Something odd happened. See docs/runtime.md. Loader: libfoo.so: wrong ELF class: ELFCLASS32");
    }

    [Fact]
    public void Text_joins_the_messages_of_the_inner_exceptions()
    {
        var e = new TypeInitializationException("TorchSharp.torch", new NotSupportedException("inner"));
        NativeRuntime.Text(e).Should().Be("The type initializer for 'TorchSharp.torch' threw an exception.\ninner");
    }
}
