using System.Runtime.InteropServices;

namespace Microsoft.ML.Lora.Checkpoints;

/// <summary>
/// What makes a rename durable on Unix: the renamed file's data and the directory entry must reach the disk
/// (fsync on both), and a folder is replaced by exchanging two names in one step (Linux renameat2 RENAME_EXCHANGE).
/// Elsewhere files are flushed through <see cref="FileStream.Flush(bool)"/>, directories are not flushed, and
/// <see cref="TryExchange"/> reports "not supported".
/// </summary>
internal static partial class Durable
{
    private const int AtFdCwd = -100;
    private const uint RenameExchange = 2;

    /// <summary>Flushes the file or directory <paramref name="path"/> to disk (fsync); a no-op where the OS has no such call for it.</summary>
    public static void Sync(string path)
    {
        if (!OperatingSystem.IsLinux())
        {
            if (File.Exists(path)) using (var s = new FileStream(path, FileMode.Open, FileAccess.ReadWrite)) s.Flush(flushToDisk: true);
            return;
        }
        int fd = Open(path, 0 /* O_RDONLY: enough for fsync, and the only way to open a directory */);
        if (fd < 0) throw new IOException($"Cannot open '{path}' to flush it to disk (errno {Marshal.GetLastPInvokeError()}).");
        try
        {
            if (FSync(fd) != 0)
                throw new IOException($"Flushing '{path}' to disk failed (errno {Marshal.GetLastPInvokeError()}); the disk may be full or failing.");
        }
        finally { Close(fd); }
    }

    /// <summary>Flushes every file and folder under <paramref name="folder"/>, the folder itself last.</summary>
    public static void SyncTree(string folder)
    {
        foreach (var file in Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories)) Sync(file);
        foreach (var dir in Directory.EnumerateDirectories(folder, "*", SearchOption.AllDirectories)) Sync(dir);
        Sync(folder);
    }

    /// <summary>
    /// Swaps the names of two existing folders in one step, so that no instant sees neither; false where the OS or
    /// the file system cannot (then the caller falls back to two renames and <see cref="AtomicFolder"/>'s recovery).
    /// </summary>
    public static bool TryExchange(string a, string b)
    {
        if (!OperatingSystem.IsLinux()) return false;
        try { return RenameAt2(AtFdCwd, a, AtFdCwd, b, RenameExchange) == 0; }
        catch (EntryPointNotFoundException) { return false; } // glibc before 2.28, or musl
    }

    [LibraryImport("libc.so.6", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc.so.6", EntryPoint = "fsync", SetLastError = true)]
    private static partial int FSync(int fd);

    [LibraryImport("libc.so.6", EntryPoint = "close")]
    private static partial int Close(int fd);

    [LibraryImport("libc.so.6", EntryPoint = "renameat2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int RenameAt2(int oldDirFd, string oldPath, int newDirFd, string newPath, uint flags);
}
