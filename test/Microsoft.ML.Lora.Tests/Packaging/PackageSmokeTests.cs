using System.Diagnostics;
using System.Reflection;
using Microsoft.ML.Lora.Tests.Docs;
using MLLora.Build;

namespace Microsoft.ML.Lora.Tests.Packaging;

/// <summary>
/// The library as a user gets it: `dotnet pack` makes Microsoft.ML.Lora.nupkg, and the apps of test/PackageSmoke,
/// copied to a temp folder outside the repository (no Directory.Build.* or central versions of this repo apply), are
/// built against it through a local package source, or against the library project by ProjectReference. The packed
/// version is unique and restore writes to a fresh NUGET_PACKAGES folder (the machine's cache is a read-only
/// fallback for TorchSharp and ML.NET), so no earlier package can be served instead.
/// </summary>
public sealed class PackageSmokeTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static string Configuration =>
        typeof(PackageSmokeTests).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Release";

    [Fact]
    public async Task Packed_library_fits_saves_and_a_second_process_predicts_from_a_copied_zip_with_the_base_moved_and_both_routes_apply_the_native_fix()
    {
        string repo = DocSnippetTests.RepoRoot;
        // "g" keeps the last identifier alphanumeric: 8 hex digits that happen to be all decimal with a leading 0
        // ("01741433") are a numeric identifier SemVer refuses ((10/16)⁸ · 1/10: one run in about 430 failed in dotnet pack).
        string version = $"0.0.0-smoke.{DateTime.UtcNow:yyyyMMddHHmmss}.g{Guid.NewGuid().ToString("N")[..8]}";
        string feed = _temp.File("feed"), packages = _temp.File("packages"), app = _temp.File("app");
        var isolated = new Dictionary<string, string> { ["NUGET_PACKAGES"] = packages };

        // 1. The package: library, XML docs, README, build/ and buildTransitive/ targets; TorchSharp without a runtime.
        await Run("dotnet", ["pack", Path.Combine(repo, "src", "Microsoft.ML.Lora"), "-c", Configuration, "--no-build", "-o", feed, $"-p:PackageVersion={version}"]);
        string nupkg = Path.Combine(feed, $"Microsoft.ML.Lora.{version}.nupkg");
        using (var zip = System.IO.Compression.ZipFile.OpenRead(nupkg))
        {
            var entries = zip.Entries.Select(e => e.FullName).ToList();
            entries.Should().Contain(["lib/net10.0/Microsoft.ML.Lora.dll", "lib/net10.0/Microsoft.ML.Lora.xml", "README.md",
                "build/Microsoft.ML.Lora.targets", "build/TorchSharpNativeFix.cs", "build/stdcxx_ios_init_shim.cpp",
                "buildTransitive/Microsoft.ML.Lora.targets", "buildTransitive/TorchSharpNativeFix.cs", "buildTransitive/stdcxx_ios_init_shim.cpp"]);
            using var reader = new StreamReader(zip.GetEntry("Microsoft.ML.Lora.nuspec")!.Open());
            string nuspec = await reader.ReadToEndAsync();
            nuspec.Should().Contain("<readme>README.md</readme>").And.Contain("id=\"TorchSharp\"").And.Contain("id=\"Microsoft.ML\"")
                .And.Contain("id=\"Microsoft.ML.Tokenizers\"").And.NotContain("TorchSharp-cpu").And.NotContain("libtorch");
        }

        // 2. The apps, outside the repository, with a nuget.config that adds the feed to the machine's sources.
        CopyFolder(Path.Combine(repo, "test", "PackageSmoke"), app);
        string globalPackages = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } env
            ? env : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        File.WriteAllText(Path.Combine(app, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources><add key="mllora-smoke" value="{feed}" /></packageSources>
              <fallbackPackageFolders><add key="machine" value="{globalPackages}" /></fallbackPackageFolders>
            </configuration>
            """);
        // Hard links instead of copies of libtorch (1 GB); the native fix replaces its file, it never writes through a link.
        File.WriteAllText(Path.Combine(app, "Directory.Build.props"), $"""
            <Project><PropertyGroup>
              <MLLoraVersion>{version}</MLLoraVersion><MLLoraRepo>{repo}</MLLoraRepo>
              <CreateHardLinksForCopyLocalIfPossible>true</CreateHardLinksForCopyLocalIfPossible>
            </PropertyGroup></Project>
            """);
        string[] build = ["build", "-c", "Release", "-nodeReuse:false", "-p:UseSharedCompilation=false"];
        await Run("dotnet", [.. build, Path.Combine(app, "PackageApps.slnx")], isolated);
        // The ProjectReference route restores with the machine's cache: the library project's own restore is the repository's.
        await Run("dotnet", [.. build, Path.Combine(app, "ProjectRoute", "ProjectRoute.csproj")]);
        Directory.GetDirectories(Path.Combine(packages, "microsoft.ml.lora")).Select(Path.GetFileName).Should().Equal(version);

        string Exe(string route) => Path.Combine(app, route, "bin", "Release", "net10.0", route + ".dll");
        foreach (var route in new[] { "PackageRoute", "ProjectRoute" })
            NativeFixApplied(Path.GetDirectoryName(Exe(route))!, route);

        // 3. Fit and save; then, in another process, load a copy of the zip with the base model moved.
        string work = Directory.CreateDirectory(_temp.File("work")).FullName;
        await Run("dotnet", [Exe("PackageRoute"), "train", work]);
        string[] expected = File.ReadAllLines(Path.Combine(work, "expected.txt"));
        expected.Should().Equal(["\"design, simplicity\"", "\"wisdom\"", "\"work, time\""], "the adapter learned the three tagged quotes");
        string copy = Path.Combine(Directory.CreateDirectory(_temp.File("elsewhere")).FullName, "copied.zip");
        File.Copy(Path.Combine(work, "model.zip"), copy);
        string movedBase = _temp.File("moved-base");
        Directory.Move(Path.Combine(work, "base"), movedBase);
        foreach (var route in new[] { "PackageRoute", "ProjectRoute" })
        {
            string output = _temp.File(route + ".txt");
            await Run("dotnet", [Exe(route), "predict", copy, movedBase, output]);
            File.ReadAllLines(output).Should().Equal(expected, $"the {route} app loads the copied zip onto the moved base");
        }

        // 4. No native runtime package: the error says so (NUGET_PACKAGES isolated, so TorchSharp's own fallback finds no libtorch).
        var (exit, text) = await Start("dotnet", [Exe("NoRuntime"), "predict", copy, movedBase, _temp.File("none.txt")], isolated);
        exit.Should().NotBe(0);
        text.Should().Contain("TorchSharp's native runtime (libtorch) is not in the application")
            .And.Contain("<PackageReference Include=\"TorchSharp-cpu\" Version=\"0.107.0\" />").And.NotContain("is not a device");
    }

    /// <summary>Where the system libstdc++ lacks GLIBCXX_3.4.32 the output's libLibTorchSharp.so is patched, with the shim beside it.</summary>
    private static void NativeFixApplied(string output, string route)
    {
        if (!OperatingSystem.IsLinux()) return;
        string library = Path.Combine(output, "runtimes", "linux-x64", "native", ElfPatcher.LibraryFileName);
        var status = ElfPatcher.Inspect(File.ReadAllBytes(library));
        string? libstdcxx = ElfPatcher.FindSystemLibStdCxx();
        if (libstdcxx != null && !ElfPatcher.ProvidesVersion(libstdcxx, ElfPatcher.NeededVersion))
        {
            status.Should().Be(PatchStatus.AlreadyPatched, $"the {route} build patches {library} for {libstdcxx}");
            File.Exists(Path.Combine(Path.GetDirectoryName(library)!, ElfPatcher.ShimFileName)).Should().BeTrue($"the {route} build puts the shim beside the library");
        }
        else
        {
            status.Should().NotBe(PatchStatus.AlreadyPatched, "a libstdc++ with GLIBCXX_3.4.32 needs no patch");
        }
    }

    private static async Task Run(string file, string[] args, IReadOnlyDictionary<string, string>? environment = null)
    {
        var (exit, text) = await Start(file, args, environment);
        exit.Should().Be(0, $"`{file} {string.Join(" ", args)}` must succeed; its output:\n{text}");
    }

    /// <summary>Runs a process to its end (10 minutes at most); its exit code and output.</summary>
    private static async Task<(int Exit, string Output)> Start(string file, string[] args, IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in args) start.ArgumentList.Add(arg);
        // No MSBuild server or node that outlives the build and holds the output pipes open.
        start.Environment["DOTNET_CLI_USE_MSBUILD_SERVER"] = "0";
        start.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        start.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        start.Environment["DOTNET_NOLOGO"] = "1";
        foreach (var (key, value) in environment ?? new Dictionary<string, string>()) start.Environment[key] = value;
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(10));
        try { await process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            return (-1, "timed out\n" + await stdout + await stderr);
        }
        return (process.ExitCode, await stdout + await stderr);
    }

    private static void CopyFolder(string from, string to)
    {
        foreach (var dir in Directory.GetDirectories(from, "*", SearchOption.AllDirectories))
            if (!IsBuildOutput(Path.GetRelativePath(from, dir))) Directory.CreateDirectory(Path.Combine(to, Path.GetRelativePath(from, dir)));
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from, "*", SearchOption.AllDirectories))
            if (!IsBuildOutput(Path.GetRelativePath(from, file))) File.Copy(file, Path.Combine(to, Path.GetRelativePath(from, file)));
    }

    private static bool IsBuildOutput(string relativePath) =>
        relativePath.Split(Path.DirectorySeparatorChar).Any(part => part is "bin" or "obj");
}
