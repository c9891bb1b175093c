using System.Security.Cryptography;
using MLLora.Build;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Native;

/// <summary>Tests of the libLibTorchSharp.so patch (TorchSharpNativeFix.cs, compiled into this project).</summary>
public sealed class ElfPatcherTests : IDisposable
{
    private readonly string _temp = Path.Combine(Path.GetTempPath(), $"mllora-elf-{Guid.NewGuid():N}");

    public ElfPatcherTests() => Directory.CreateDirectory(_temp);

    public void Dispose() => Directory.Delete(_temp, recursive: true);

    /// <summary>The unmodified library in the NuGet cache (NUGET_PACKAGES or ~/.nuget/packages).</summary>
    private static string PristineLibrary()
    {
        string packages = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } env
            ? env : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string path = Path.Combine(packages, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", ElfPatcher.LibraryFileName);
        File.Exists(path).Should().BeTrue($"the TorchSharp package should be in the NuGet cache at {path}");
        return path;
    }

    private static string OutputLibrary => Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", ElfPatcher.LibraryFileName);

    private string CopyOfPristine()
    {
        string copy = Path.Combine(_temp, ElfPatcher.LibraryFileName);
        File.Copy(PristineLibrary(), copy);
        return copy;
    }

    private static byte[] Sha256(string path) => SHA256.HashData(File.ReadAllBytes(path));

    [Fact]
    public void ElfHash_of_known_names()
    {
        ElfPatcher.ElfHash("").Should().Be(0u);
        ElfPatcher.ElfHash("GLIBCXX_3.4.30").Should().Be(0x0297F840u);
        ElfPatcher.ElfHash("GLIBCXX_3.4.32").Should().Be(0x0297F842u);
        ElfPatcher.ElfHash("GLIBC_2.2.5").Should().Be(0x09691A75u);
    }

    [LinuxFact]
    public void ElfHash_matches_the_hashes_stored_in_the_pristine_library()
    {
        var elf = new ElfPatcher.ElfFile(File.ReadAllBytes(PristineLibrary()));
        var requirements = elf.VersionRequirements().ToList();
        requirements.Select(r => r.name).Should().Contain([ElfPatcher.ReplacementVersion, ElfPatcher.NeededVersion, "GLIBC_2.2.5"]);
        foreach (var (aux, name) in requirements)
            elf.U32(aux).Should().Be(ElfPatcher.ElfHash(name), name);
    }

    [LinuxFact]
    public void Pristine_library_needs_the_patch()
    {
        var elf = new ElfPatcher.ElfFile(File.ReadAllBytes(PristineLibrary()));
        ElfPatcher.Inspect(File.ReadAllBytes(PristineLibrary())).Should().Be(PatchStatus.NeedsPatch);
        elf.SymbolVersion(ElfPatcher.ShimmedSymbol).Should().Be(ElfPatcher.NeededVersion);
        elf.Needed().Should().NotContain(ElfPatcher.ShimFileName);
        elf.RunPath().Should().NotBe("$ORIGIN").And.Contain("$ORIGIN");
    }

    [LinuxFact]
    public void Patch_rewrites_version_runpath_and_needed_in_place()
    {
        string pristine = PristineLibrary();
        byte[] pristineHash = Sha256(pristine);
        var before = new ElfPatcher.ElfFile(File.ReadAllBytes(pristine));
        string copy = CopyOfPristine();

        ElfPatcher.PatchFile(copy).Should().BeTrue();

        byte[] patched = File.ReadAllBytes(copy);
        patched.Length.Should().Be((int)new FileInfo(pristine).Length);
        ElfPatcher.Inspect(patched).Should().Be(PatchStatus.AlreadyPatched);
        var elf = new ElfPatcher.ElfFile(patched);

        elf.SymbolVersion(ElfPatcher.ShimmedSymbol).Should().BeNull();
        var requirements = elf.VersionRequirements().ToList();
        requirements.Should().HaveCount(before.VersionRequirements().Count());
        requirements.Select(r => r.name).Should().NotContain(ElfPatcher.NeededVersion);
        var replaced = requirements.Where(r => r.name == ElfPatcher.ReplacementVersion).ToList();
        replaced.Should().HaveCount(2, "the pristine library already requires GLIBCXX_3.4.30 and the renamed entry joins it");
        foreach (var (aux, _) in replaced) elf.U32(aux).Should().Be(0x0297F840u);

        elf.Needed().Should().Equal(before.Needed().Append(ElfPatcher.ShimFileName));
        elf.RunPath().Should().Be("$ORIGIN");

        // Every other symbol keeps its version.
        for (int i = 0; i < elf.SymbolCount; i++)
        {
            string name = elf.SymbolName(i);
            if (name == ElfPatcher.ShimmedSymbol || name.Length == 0) continue;
            elf.U16(elf.Versym.Offset + 2 * i).Should().Be(before.U16(before.Versym.Offset + 2 * i), name);
        }

        Sha256(pristine).Should().Equal(pristineHash, "the NuGet cache is never modified");
    }

    [LinuxFact]
    public void Patching_twice_is_a_no_op()
    {
        string copy = CopyOfPristine();
        ElfPatcher.PatchFile(copy).Should().BeTrue();
        byte[] once = File.ReadAllBytes(copy);
        ElfPatcher.PatchFile(copy).Should().BeFalse();
        File.ReadAllBytes(copy).Should().Equal(once);
        ElfPatcher.Inspect(once).Should().Be(PatchStatus.AlreadyPatched);
        Directory.GetFiles(_temp).Select(Path.GetFileName).Should().Equal(ElfPatcher.LibraryFileName);
    }

    [LinuxFact]
    public void Patch_in_memory_refuses_a_library_without_the_requirement()
    {
        byte[] patched = File.ReadAllBytes(CopyOfPristine());
        ElfPatcher.Patch(patched);
        FluentActions.Invoking(() => ElfPatcher.Patch(patched)).Should().Throw<InvalidOperationException>()
            .WithMessage("the library does not require GLIBCXX_3.4.32.");
    }

    [LinuxFact]
    public void A_library_without_the_requirement_needs_no_patch()
    {
        string? libstdcxx = ElfPatcher.FindSystemLibStdCxx();
        libstdcxx.Should().NotBeNull();
        ElfPatcher.Inspect(File.ReadAllBytes(libstdcxx!)).Should().Be(PatchStatus.NotNeeded);
    }

    [Fact]
    public void Not_an_elf_file_is_rejected()
    {
        FluentActions.Invoking(() => ElfPatcher.Inspect(new byte[128])).Should().Throw<InvalidDataException>().WithMessage("not an ELF file.");
    }

    [LinuxFact]
    public void Library_in_the_output_folder_is_patched_iff_the_system_libstdcxx_lacks_GLIBCXX_3_4_32()
    {
        string? libstdcxx = ElfPatcher.FindSystemLibStdCxx();
        libstdcxx.Should().NotBeNull();
        bool needsFix = !ElfPatcher.ProvidesVersion(libstdcxx!, ElfPatcher.NeededVersion);
        string shim = Path.Combine(Path.GetDirectoryName(OutputLibrary)!, ElfPatcher.ShimFileName);

        ElfPatcher.Inspect(File.ReadAllBytes(OutputLibrary)).Should().Be(needsFix ? PatchStatus.AlreadyPatched : PatchStatus.NeedsPatch);
        File.Exists(shim).Should().Be(needsFix);
        if (!needsFix) File.ReadAllBytes(OutputLibrary).Should().Equal(File.ReadAllBytes(PristineLibrary()));
    }

    [LinuxFact]
    public void The_process_loads_the_output_folders_library()
    {
        using (var scope = NewDisposeScope()) ones(1).sum().item<float>().Should().Be(1f);
        string maps = File.ReadAllText("/proc/self/maps");
        maps.Should().Contain(OutputLibrary);
        bool needsFix = !ElfPatcher.ProvidesVersion(ElfPatcher.FindSystemLibStdCxx()!, ElfPatcher.NeededVersion);
        maps.Contains(Path.Combine(Path.GetDirectoryName(OutputLibrary)!, ElfPatcher.ShimFileName)).Should().Be(needsFix);
    }

    [LinuxFact]
    public void ProvidesVersion_reads_version_names()
    {
        string libstdcxx = ElfPatcher.FindSystemLibStdCxx()!;
        ElfPatcher.ProvidesVersion(libstdcxx, "GLIBCXX_3.4").Should().BeTrue();
        ElfPatcher.ProvidesVersion(libstdcxx, "GLIBCXX_9.9.99").Should().BeFalse();
    }
}
