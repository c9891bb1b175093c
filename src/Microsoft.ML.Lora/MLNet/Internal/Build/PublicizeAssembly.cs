// Build-time only: compiled by MSBuild's RoslynCodeTaskFactory (see MLNetInternals.targets), never part of the library.
//
// Writes a copy of a referenced assembly in which the listed types, and their internal fields and methods, are public,
// so that the C# compiler lets this library use ML.NET's model save/load machinery (ModelSaveContext, ModelLoadContext,
// VersionInfo, LoadableClassAttribute, SignatureLoadModel). At run time the real assembly is loaded and
// [assembly: IgnoresAccessChecksTo("Microsoft.ML.Core")] lets the runtime accept those accesses.
//
// Only the access bits of the TypeDef, Field and MethodDef rows are changed, in place, so the copy keeps the identity of
// the original (name, version, public key). Uses netstandard APIs only (ECMA-335 II.24 and II.22 are read by hand).
namespace MLLora.Build
{
    using System;
    using System.Collections.Generic;
    using System.IO;
    using System.Linq;
    using System.Text;
    using Microsoft.Build.Framework;
    using Microsoft.Build.Utilities;

    public sealed class PublicizeAssembly : Task
    {
        [Required] public string InputAssembly { get; set; } = "";
        [Required] public string OutputAssembly { get; set; } = "";
        /// <summary>Full names (Namespace.Name) of the types to publicize, separated by ';'.</summary>
        [Required] public string TypeNames { get; set; } = "";

        public override bool Execute()
        {
            try
            {
                var wanted = new HashSet<string>(TypeNames.Split(new[] { ';' }, StringSplitOptions.RemoveEmptyEntries).Select(s => s.Trim()));
                byte[] image = File.ReadAllBytes(InputAssembly);
                var found = Publicizer.Publicize(image, wanted);
                var missing = wanted.Where(w => !found.Contains(w)).ToList();
                if (missing.Count > 0)
                {
                    Log.LogError("MLLora: types not found in {0}: {1}. The ML.NET version this library pins may have changed.",
                        InputAssembly, string.Join(", ", missing));
                    return false;
                }
                Directory.CreateDirectory(Path.GetDirectoryName(OutputAssembly)!);
                string tmp = OutputAssembly + ".tmp";
                File.WriteAllBytes(tmp, image);
                if (File.Exists(OutputAssembly)) File.Delete(OutputAssembly);
                File.Move(tmp, OutputAssembly);
                Log.LogMessage(MessageImportance.Low, "MLLora: publicized {0} type(s) of {1} into {2}", found.Count, InputAssembly, OutputAssembly);
                return true;
            }
            catch (Exception e)
            {
                Log.LogError("MLLora: cannot publicize {0}: {1}", InputAssembly, e.Message);
                return false;
            }
        }
    }

    internal static class Publicizer
    {
        private const int TypeDefTable = 0x02, FieldTable = 0x04, MethodDefTable = 0x06;

        /// <summary>Patches <paramref name="pe"/> in place; returns the names of the types it found.</summary>
        public static HashSet<string> Publicize(byte[] pe, ISet<string> typeNames)
        {
            int peOff = I32(pe, 0x3C);
            if (I32(pe, peOff) != 0x00004550) throw new InvalidDataException("not a PE file");
            int coff = peOff + 4;
            int sections = U16(pe, coff + 2);
            int optSize = U16(pe, coff + 16);
            int opt = coff + 20;
            int magic = U16(pe, opt);
            int dirs = opt + (magic == 0x20B ? 112 : 96);
            int sectionTable = opt + optSize;
            int cliRva = I32(pe, dirs + 14 * 8);
            if (cliRva == 0) throw new InvalidDataException("not a .NET assembly");

            int RvaToOffset(int rva)
            {
                for (int s = 0; s < sections; s++)
                {
                    int h = sectionTable + s * 40;
                    int vsize = I32(pe, h + 8), va = I32(pe, h + 12), rawSize = I32(pe, h + 16), raw = I32(pe, h + 20);
                    if (rva >= va && rva < va + Math.Max(vsize, rawSize)) return rva - va + raw;
                }
                throw new InvalidDataException("RVA outside sections");
            }

            int cli = RvaToOffset(cliRva);
            int mdRoot = RvaToOffset(I32(pe, cli + 8));
            if ((uint)I32(pe, mdRoot) != 0x424A5342) throw new InvalidDataException("bad metadata signature");
            int verLen = I32(pe, mdRoot + 12);
            int p = mdRoot + 16 + verLen + 2;
            int streamCount = U16(pe, p);
            p += 2;
            int tablesOff = -1, stringsOff = -1;
            for (int i = 0; i < streamCount; i++)
            {
                int off = I32(pe, p), nameStart = p + 8, end = nameStart;
                while (pe[end] != 0) end++;
                string name = Encoding.ASCII.GetString(pe, nameStart, end - nameStart);
                if (name == "#~") tablesOff = mdRoot + off;
                else if (name == "#-") throw new InvalidDataException("uncompressed metadata tables are not supported");
                else if (name == "#Strings") stringsOff = mdRoot + off;
                p = nameStart + ((end - nameStart + 4) & ~3);
            }
            if (tablesOff < 0 || stringsOff < 0) throw new InvalidDataException("metadata streams missing");

            int heapSizes = pe[tablesOff + 6];
            if ((heapSizes & 0x40) != 0) throw new InvalidDataException("extra metadata table data is not supported");
            ulong valid = BitConverter.ToUInt64(pe, tablesOff + 8);
            var rows = new int[64];
            p = tablesOff + 24;
            for (int t = 0; t < 64; t++)
                if ((valid & (1UL << t)) != 0) { rows[t] = I32(pe, p); p += 4; }
            if (rows[0x03] != 0 || rows[0x05] != 0) throw new InvalidDataException("FieldPtr/MethodPtr tables are not supported");

            int str = (heapSizes & 1) != 0 ? 4 : 2, guid = (heapSizes & 2) != 0 ? 4 : 2, blob = (heapSizes & 4) != 0 ? 4 : 2;
            int Idx(int table) => rows[table] < 65536 ? 2 : 4;
            int Coded(int bits, params int[] tables) => tables.Max(t => rows[t]) < (1 << (16 - bits)) ? 2 : 4;

            int moduleRow = 2 + str + 3 * guid;
            int typeRefRow = Coded(2, 0x00, 0x1A, 0x23, 0x01) + 2 * str;
            int typeDefExtends = Coded(2, 0x02, 0x01, 0x1B);
            int typeDefRow = 4 + 2 * str + typeDefExtends + Idx(FieldTable) + Idx(MethodDefTable);
            int fieldRow = 2 + str + blob;
            int methodRow = 4 + 2 + 2 + str + blob + Idx(0x08);

            int typeDefStart = p + rows[0x00] * moduleRow + rows[0x01] * typeRefRow;
            int fieldStart = typeDefStart + rows[TypeDefTable] * typeDefRow;
            int methodStart = fieldStart + rows[FieldTable] * fieldRow;

            int ReadIdx(int at, int size) => size == 2 ? U16(pe, at) : I32(pe, at);
            string ReadString(int at)
            {
                int s = stringsOff + ReadIdx(at, str), e = s;
                while (pe[e] != 0) e++;
                return Encoding.UTF8.GetString(pe, s, e - s);
            }

            var found = new HashSet<string>();
            for (int t = 0; t < rows[TypeDefTable]; t++)
            {
                int row = typeDefStart + t * typeDefRow;
                string ns = ReadString(row + 4 + str), name = ReadString(row + 4);
                string full = ns.Length == 0 ? name : ns + "." + name;
                if (!typeNames.Contains(full)) continue;
                found.Add(full);

                // Type visibility (TypeAttributes.VisibilityMask = 7): NotPublic -> Public, NestedAssembly/NestedFamORAssem -> NestedPublic.
                int flags = I32(pe, row), vis = flags & 7;
                int newVis = vis == 0 ? 1 : (vis == 5 || vis == 7) ? 2 : vis;
                W32(pe, row, (flags & ~7) | newVis);

                int fieldsAt = row + 4 + 2 * str + typeDefExtends;
                int methodsAt = fieldsAt + Idx(FieldTable);
                int firstField = ReadIdx(fieldsAt, Idx(FieldTable)), firstMethod = ReadIdx(methodsAt, Idx(MethodDefTable));
                int endField = rows[FieldTable] + 1, endMethod = rows[MethodDefTable] + 1;
                if (t + 1 < rows[TypeDefTable])
                {
                    int next = row + typeDefRow;
                    endField = ReadIdx(next + 4 + 2 * str + typeDefExtends, Idx(FieldTable));
                    endMethod = ReadIdx(next + 4 + 2 * str + typeDefExtends + Idx(FieldTable), Idx(MethodDefTable));
                }
                for (int f = firstField; f < endField; f++) PublicizeMember(pe, fieldStart + (f - 1) * fieldRow);
                for (int m = firstMethod; m < endMethod; m++) PublicizeMember(pe, methodStart + (m - 1) * methodRow + 6);
            }
            return found;
        }

        // Field and method access (mask 7): Assembly (3) and FamORAssem (5) -> Public (6); private and protected stay.
        private static void PublicizeMember(byte[] pe, int flagsAt)
        {
            int flags = U16(pe, flagsAt), access = flags & 7;
            if (access == 3 || access == 5)
            {
                flags = (flags & ~7) | 6;
                pe[flagsAt] = (byte)flags;
                pe[flagsAt + 1] = (byte)(flags >> 8);
            }
        }

        private static int U16(byte[] b, int at) => b[at] | (b[at + 1] << 8);
        private static int I32(byte[] b, int at) => BitConverter.ToInt32(b, at);
        private static void W32(byte[] b, int at, int v) { b[at] = (byte)v; b[at + 1] = (byte)(v >> 8); b[at + 2] = (byte)(v >> 16); b[at + 3] = (byte)(v >> 24); }
    }
}
