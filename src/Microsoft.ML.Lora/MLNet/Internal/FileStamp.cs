using System.Runtime.InteropServices;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// What a rewrite of a file changes, to key cached fingerprints: size, modification time, status-change time (ctime)
/// and inode. Rewriting a file in place changes its mtime and ctime; setting the mtime back (touch -d) changes the
/// ctime again, which no user can set; replacing it by a rename changes the inode. On Linux these come from statx;
/// elsewhere (or if statx is missing) from size, last write and creation times only.
/// </summary>
internal static class FileStamp
{
    private static bool _noStatx = !OperatingSystem.IsLinux();

    public static string Of(string path)
    {
        if (!_noStatx)
        {
            try
            {
                var buffer = new byte[256];
                if (Statx(AtFdCwd, path, 0, StatxBasicStats, buffer) == 0)
                {
                    ulong ino = BitConverter.ToUInt64(buffer, 32), size = BitConverter.ToUInt64(buffer, 40);
                    long ctime = BitConverter.ToInt64(buffer, 96), mtime = BitConverter.ToInt64(buffer, 112);
                    uint ctimeNs = BitConverter.ToUInt32(buffer, 104), mtimeNs = BitConverter.ToUInt32(buffer, 120);
                    uint devMajor = BitConverter.ToUInt32(buffer, 136), devMinor = BitConverter.ToUInt32(buffer, 140);
                    return FormattableString.Invariant($"{size}:{mtime}.{mtimeNs}:{ctime}.{ctimeNs}:{devMajor}.{devMinor}:{ino}");
                }
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { _noStatx = true; }
        }
        var info = new FileInfo(path);
        return FormattableString.Invariant($"{info.Length}:{info.LastWriteTimeUtc.Ticks}:{info.CreationTimeUtc.Ticks}");
    }

    private const int AtFdCwd = -100;
    private const uint StatxBasicStats = 0x7ff;

    // struct statx is the same on every Linux architecture: stx_ino at 32, stx_size at 40, stx_ctime at 96,
    // stx_mtime at 112 (each a 64-bit second and a 32-bit nanosecond), stx_dev_major/minor at 136/140.
    [DllImport("libc", EntryPoint = "statx", SetLastError = true)]
    private static extern int Statx(int dirfd, [MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags, uint mask, byte[] buffer);
}
