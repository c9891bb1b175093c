#nullable enable
// Makes TorchSharp 0.107's libLibTorchSharp.so load on systems whose libstdc++ predates GCC 13 (Debian 12,
// Ubuntu 22.04). The library asks for GLIBCXX_3.4.32 for one symbol only, std::ios_base_library_init(), which
// GCC 13's <iostream> references to pin the library version; it is never called for its result.
//
// This file is compiled twice: by MSBuild's RoslynCodeTaskFactory (Microsoft.ML.Lora.targets) to patch the copy
// of the library in a build's output folder, and by the test project (with MLLORA_NO_MSBUILD_TASK defined), which
// tests ElfPatcher directly.
// The NuGet cache is never modified: only files under the output folder are.
using System;
using System.Collections.Generic;
using System.Diagnostics;
using System.IO;
using System.Text;
#if !MLLORA_NO_MSBUILD_TASK
using Microsoft.Build.Framework;
#endif

namespace MLLora.Build
{
#if !MLLORA_NO_MSBUILD_TASK
    /// <summary>MSBuild task: patches every libLibTorchSharp.so under <see cref="OutputDirectory"/> when needed.</summary>
    public sealed class PatchLibTorchSharp : Microsoft.Build.Utilities.Task
    {
        [Required] public string OutputDirectory { get; set; } = "";
        [Required] public string ShimSource { get; set; } = "";
        [Required] public string IntermediateDirectory { get; set; } = "";

        public override bool Execute()
        {
            if (!Directory.Exists(OutputDirectory)) return true;
            var libraries = Directory.GetFiles(OutputDirectory, ElfPatcher.LibraryFileName, SearchOption.AllDirectories);
            if (libraries.Length == 0) return true;

            string? libstdcxx = ElfPatcher.FindSystemLibStdCxx();
            if (libstdcxx == null || ElfPatcher.ProvidesVersion(libstdcxx, ElfPatcher.NeededVersion))
            {
                Log.LogMessage(MessageImportance.High,
                    "MLLora: system libstdc++ " + (libstdcxx ?? "(not found)") + " provides " + ElfPatcher.NeededVersion +
                    " or none was found; libLibTorchSharp.so is left as it is.");
                return true;
            }

            foreach (var library in libraries)
            {
                try
                {
                    var status = ElfPatcher.Inspect(File.ReadAllBytes(library));
                    if (status == PatchStatus.NotNeeded) continue;
                    // A library patched by an earlier build still needs the shim beside it.
                    string shimTarget = Path.Combine(Path.GetDirectoryName(library)!, ElfPatcher.ShimFileName);
                    if (status == PatchStatus.AlreadyPatched && File.Exists(shimTarget)) continue;
                    File.Copy(EnsureShim(), shimTarget, overwrite: true);
                    if (status == PatchStatus.AlreadyPatched) continue;
                    ElfPatcher.PatchFile(library);
                    Log.LogMessage(MessageImportance.High,
                        "MLLora: patched " + library + " for " + libstdcxx + " (no " + ElfPatcher.NeededVersion + ", see docs/debian12.md).");
                }
                catch (Exception e)
                {
                    Log.LogError("MLLora: could not make " + library + " loadable on this system: " + e.Message +
                        " Install g++ (apt-get install g++), or a libstdc++ from GCC 13 or newer, or set MLLoraSkipNativeFix=true to skip this step.");
                    return false;
                }
            }
            return true;
        }

        private string EnsureShim()
        {
            Directory.CreateDirectory(IntermediateDirectory);
            string output = Path.Combine(IntermediateDirectory, ElfPatcher.ShimFileName);
            if (File.Exists(output) && File.GetLastWriteTimeUtc(output) >= File.GetLastWriteTimeUtc(ShimSource)) return output;
            string compiler = Environment.GetEnvironmentVariable("CXX") ?? "g++";
            var start = new ProcessStartInfo(compiler, "-shared -fPIC -O2 -o \"" + output + "\" \"" + ShimSource + "\"")
            {
                RedirectStandardError = true,
                RedirectStandardOutput = true,
                UseShellExecute = false,
            };
            Process process;
            try { process = Process.Start(start)!; }
            catch (Exception e) { throw new InvalidOperationException("the C++ compiler '" + compiler + "' could not be started (" + e.Message + ")."); }
            string errors = process.StandardError.ReadToEnd();
            process.WaitForExit();
            if (process.ExitCode != 0) throw new InvalidOperationException(compiler + " failed to build the shim: " + errors);
            return output;
        }
    }

#endif

    public enum PatchStatus { NotNeeded, NeedsPatch, AlreadyPatched }

    /// <summary>In-place edits of an ELF64 little-endian shared library; the file keeps its size and layout.</summary>
    public static class ElfPatcher
    {
        public const string LibraryFileName = "libLibTorchSharp.so";
        public const string ShimFileName = "libmllora_stdcxx_shim.so";
        public const string NeededVersion = "GLIBCXX_3.4.32";
        public const string ReplacementVersion = "GLIBCXX_3.4.30";
        public const string ShimmedSymbol = "_ZSt21ios_base_library_initv";

        private const uint ShtDynamic = 6, ShtDynsym = 11, ShtVerneed = 0x6ffffffe, ShtVersym = 0x6fffffff;
        private const long DtNull = 0, DtNeeded = 1, DtRpath = 15, DtRunpath = 29;

        public static string? FindSystemLibStdCxx()
        {
            foreach (var dir in new[] { "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                                        "/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib" })
            {
                string path = Path.Combine(dir, "libstdc++.so.6");
                if (File.Exists(path)) return path;
            }
            return null;
        }

        /// <summary>True when the library defines the version (its name appears as a NUL-terminated string).</summary>
        public static bool ProvidesVersion(string libraryPath, string version) =>
            IndexOf(File.ReadAllBytes(libraryPath), Encoding.ASCII.GetBytes(version + "\0")) >= 0;

        public static PatchStatus Inspect(byte[] elf)
        {
            var f = new ElfFile(elf);
            if (f.Needed().Contains(ShimFileName)) return PatchStatus.AlreadyPatched;
            return f.FindVernaux(NeededVersion) >= 0 ? PatchStatus.NeedsPatch : PatchStatus.NotNeeded;
        }

        /// <summary>Patches the file atomically (temp file, then rename). Returns false when nothing had to change.</summary>
        public static bool PatchFile(string path)
        {
            byte[] elf = File.ReadAllBytes(path);
            if (Inspect(elf) != PatchStatus.NeedsPatch) return false;
            Patch(elf);
            string temp = path + "." + Guid.NewGuid().ToString("N") + ".mllora.tmp";
            try
            {
                File.WriteAllBytes(temp, elf);
                File.Replace(temp, path, null); // a rename: the library is never seen half written
            }
            finally
            {
                if (File.Exists(temp)) File.Delete(temp);
            }
            return true;
        }

        /// <summary>
        /// 1. Every symbol bound to GLIBCXX_3.4.32 (only std::ios_base_library_init is allowed) becomes unversioned.
        /// 2. The requirement GLIBCXX_3.4.32 is renamed GLIBCXX_3.4.30 (name string and ELF hash).
        /// 3. The RUNPATH is cut to "$ORIGIN" (its other entries are paths of TorchSharp's build machine) and the
        ///    freed bytes hold the shim's file name, which a new DT_NEEDED entry (a spare DT_NULL slot) points to.
        /// </summary>
        public static void Patch(byte[] elf)
        {
            var f = new ElfFile(elf);
            int aux = f.FindVernaux(NeededVersion);
            if (aux < 0) throw new InvalidOperationException("the library does not require " + NeededVersion + ".");
            ushort versionIndex = f.U16(aux + 6);

            for (int i = 0; i < f.SymbolCount; i++)
            {
                if ((f.U16(f.Versym.Offset + 2 * i) & 0x7fff) != versionIndex) continue;
                string name = f.SymbolName(i);
                if (name != ShimmedSymbol)
                    throw new InvalidOperationException("symbol " + name + " needs " + NeededVersion + "; only " + ShimmedSymbol + " can be provided by the shim.");
                f.W16(f.Versym.Offset + 2 * i, 1);
            }

            int nameOffset = f.Dynstr.Offset + (int)f.U32(aux + 8);
            Encoding.ASCII.GetBytes(ReplacementVersion).CopyTo(elf, nameOffset);
            f.W32(aux, ElfHash(ReplacementVersion));

            var (runpathEntry, runpathString) = f.FindDynamic(DtRunpath, DtRpath);
            if (runpathEntry < 0) throw new InvalidOperationException("the library has no RUNPATH to hold the shim's name.");
            int runpathOffset = f.Dynstr.Offset + runpathString;
            int runpathLength = IndexOf(elf, new byte[] { 0 }, runpathOffset) - runpathOffset;
            byte[] replacement = Encoding.ASCII.GetBytes("$ORIGIN\0" + ShimFileName + "\0");
            if (replacement.Length > runpathLength + 1)
                throw new InvalidOperationException("the RUNPATH string is too short to hold the shim's name.");
            Array.Clear(elf, runpathOffset, runpathLength);
            replacement.CopyTo(elf, runpathOffset);

            f.InsertNeeded(runpathString + "$ORIGIN\0".Length);
        }

        public static uint ElfHash(string name)
        {
            uint h = 0;
            foreach (char c in name)
            {
                h = (h << 4) + c;
                uint g = h & 0xf0000000;
                if (g != 0) h ^= g >> 24;
                h &= ~g;
            }
            return h;
        }

        private static int IndexOf(byte[] haystack, byte[] needle, int start = 0)
        {
            for (int i = start; i <= haystack.Length - needle.Length; i++)
            {
                int j = 0;
                while (j < needle.Length && haystack[i + j] == needle[j]) j++;
                if (j == needle.Length) return i;
            }
            return -1;
        }

        internal readonly struct Section
        {
            public Section(int offset, int size, int link) { Offset = offset; Size = size; Link = link; }
            public int Offset { get; }
            public int Size { get; }
            public int Link { get; }
        }

        /// <summary>Public for tests: reads the dynamic section, version requirements and dynamic symbols.</summary>
        public sealed class ElfFile
        {
            private readonly byte[] _b;
            internal Section Dynsym, Dynstr, Versym, Verneed, Dynamic;

            public ElfFile(byte[] bytes)
            {
                _b = bytes;
                if (bytes.Length < 64 || bytes[0] != 0x7f || bytes[1] != (byte)'E' || bytes[2] != (byte)'L' || bytes[3] != (byte)'F')
                    throw new InvalidDataException("not an ELF file.");
                if (bytes[4] != 2 || bytes[5] != 1) throw new InvalidDataException("only 64-bit little-endian ELF files are supported.");
                long shoff = (long)U64(0x28);
                int shentsize = U16(0x3A), shnum = U16(0x3C);
                var sections = new List<(uint type, Section s)>();
                for (int i = 0; i < shnum; i++)
                {
                    int h = (int)shoff + i * shentsize;
                    sections.Add((U32(h + 4), new Section((int)U64(h + 0x18), (int)U64(h + 0x20), (int)U32(h + 0x28))));
                }
                foreach (var (type, s) in sections)
                {
                    if (type == ShtDynsym) { Dynsym = s; Dynstr = sections[s.Link].s; }
                    else if (type == ShtVersym) Versym = s;
                    else if (type == ShtVerneed) Verneed = s;
                    else if (type == ShtDynamic) Dynamic = s;
                }
                if (Dynsym.Size == 0 || Dynamic.Size == 0) throw new InvalidDataException("the file has no dynamic symbols or no dynamic section.");
            }

            public int SymbolCount => Dynsym.Size / 24;
            internal ushort U16(int o) => BitConverter.ToUInt16(_b, o);
            internal uint U32(int o) => BitConverter.ToUInt32(_b, o);
            internal ulong U64(int o) => BitConverter.ToUInt64(_b, o);
            internal void W16(int o, ushort v) => BitConverter.GetBytes(v).CopyTo(_b, o);
            internal void W32(int o, uint v) => BitConverter.GetBytes(v).CopyTo(_b, o);
            internal void W64(int o, ulong v) => BitConverter.GetBytes(v).CopyTo(_b, o);

            public string Str(int offsetInDynstr)
            {
                int start = Dynstr.Offset + offsetInDynstr, end = start;
                while (_b[end] != 0) end++;
                return Encoding.ASCII.GetString(_b, start, end - start);
            }

            public string SymbolName(int index) => Str((int)U32(Dynsym.Offset + 24 * index));

            /// <summary>The version name a dynamic symbol is bound to, or null when unversioned.</summary>
            public string? SymbolVersion(string symbol)
            {
                for (int i = 0; i < SymbolCount; i++)
                {
                    if (SymbolName(i) != symbol) continue;
                    int index = U16(Versym.Offset + 2 * i) & 0x7fff;
                    if (index <= 1) return null;
                    foreach (var (aux, name) in VersionRequirements())
                        if (U16(aux + 6) == index) return name;
                    return null;
                }
                throw new KeyNotFoundException("symbol " + symbol + " not found.");
            }

            /// <summary>File offsets of every Vernaux entry with its version name.</summary>
            public IEnumerable<(int aux, string name)> VersionRequirements()
            {
                if (Verneed.Size == 0) yield break;
                int vn = Verneed.Offset;
                while (true)
                {
                    int aux = vn + (int)U32(vn + 8);
                    for (int k = 0; k < U16(vn + 2); k++)
                    {
                        yield return (aux, Str((int)U32(aux + 8)));
                        uint next = U32(aux + 12);
                        if (next == 0) break;
                        aux += (int)next;
                    }
                    uint nextVn = U32(vn + 12);
                    if (nextVn == 0) yield break;
                    vn += (int)nextVn;
                }
            }

            public int FindVernaux(string version)
            {
                foreach (var (aux, name) in VersionRequirements()) if (name == version) return aux;
                return -1;
            }

            public List<string> Needed()
            {
                var names = new List<string>();
                for (int e = Dynamic.Offset; e < Dynamic.Offset + Dynamic.Size; e += 16)
                {
                    long tag = (long)U64(e);
                    if (tag == DtNull) break;
                    if (tag == DtNeeded) names.Add(Str((int)U64(e + 8)));
                }
                return names;
            }

            public string? RunPath()
            {
                var (entry, value) = FindDynamic(DtRunpath, DtRpath);
                return entry < 0 ? null : Str(value);
            }

            internal (int entry, int value) FindDynamic(params long[] tags)
            {
                for (int e = Dynamic.Offset; e < Dynamic.Offset + Dynamic.Size; e += 16)
                {
                    long tag = (long)U64(e);
                    if (tag == DtNull) break;
                    if (Array.IndexOf(tags, tag) >= 0) return (e, (int)U64(e + 8));
                }
                return (-1, 0);
            }

            /// <summary>Inserts DT_NEEDED after the last DT_NEEDED, shifting later entries into a spare DT_NULL slot.</summary>
            internal void InsertNeeded(int nameOffset)
            {
                int end = Dynamic.Offset + Dynamic.Size, firstNull = -1, afterNeeded = Dynamic.Offset;
                for (int e = Dynamic.Offset; e < end; e += 16)
                {
                    long tag = (long)U64(e);
                    if (tag == DtNull) { firstNull = e; break; }
                    if (tag == DtNeeded) afterNeeded = e + 16;
                }
                if (firstNull < 0 || firstNull + 16 >= end)
                    throw new InvalidOperationException("the dynamic section has no spare slot for a DT_NEEDED entry.");
                Buffer.BlockCopy(_b, afterNeeded, _b, afterNeeded + 16, firstNull - afterNeeded);
                W64(afterNeeded, (ulong)DtNeeded);
                W64(afterNeeded + 8, (ulong)nameOffset);
            }
        }
    }
}
