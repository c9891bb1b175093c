using System.Diagnostics;

namespace Microsoft.ML.Lora.Checkpoints;

/// <summary>
/// Writes a whole folder (an adapter, a merged model, a checkpoint-N) so that at every instant the old complete
/// version or the new complete version exists under its name: the new one is written into the sibling
/// <c>NAME.tmp-PID.N</c>, flushed to disk, then exchanged with the old one in one step (Linux renameat2
/// RENAME_EXCHANGE). Where that call is missing, the old folder is renamed to <c>NAME.old-PID.N</c> before the new one
/// takes its name; a kill between the two renames is repaired by <see cref="Recover"/> (the next save or load moves
/// the old folder back). Temporaries of processes that are gone are removed on the next save.
/// </summary>
internal static class AtomicFolder
{
    private const string TmpTag = ".tmp-", OldTag = ".old-";
    private static int _counter;

    /// <summary>Test hook: runs when the new folder is complete on disk, before it replaces the old one.</summary>
    internal static Action<string>? BeforeSwap;

    /// <summary>
    /// Writes <paramref name="folder"/> through <paramref name="write"/>, which gets the temporary folder to fill.
    /// With <paramref name="keepOtherEntries"/>, files and folders of the old version that the writer did not make
    /// are copied into the new one (as a save into a folder keeps its other files).
    /// </summary>
    public static void Write(string folder, Action<string> write, bool keepOtherEntries = false)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder));
        string parent = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(parent);
        Recover(full);
        string suffix = $"{Environment.ProcessId}.{Interlocked.Increment(ref _counter)}";
        string tmp = full + TmpTag + suffix;
        if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        Directory.CreateDirectory(tmp);
        try
        {
            write(tmp);
            if (keepOtherEntries && Directory.Exists(full)) CopyMissing(full, tmp);
            Durable.SyncTree(tmp);
            BeforeSwap?.Invoke(full);
            if (!Directory.Exists(full)) Directory.Move(tmp, full);
            else if (Durable.TryExchange(tmp, full)) Delete(tmp); // tmp now holds the old version
            else
            {
                string old = full + OldTag + suffix;
                Directory.Move(full, old);
                Directory.Move(tmp, full);
                Delete(old);
            }
            Durable.Sync(parent);
        }
        catch
        {
            Delete(tmp);
            throw;
        }
    }

    /// <summary>
    /// Repairs what a killed <see cref="Write"/> left next to <paramref name="folder"/>: when the folder is missing but
    /// an old version is there (a kill between the two fallback renames) it is moved back; temporaries of processes
    /// that are gone are deleted.
    /// </summary>
    public static void Recover(string folder)
    {
        string full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder));
        string parent = Path.GetDirectoryName(full)!, name = Path.GetFileName(full);
        if (!Directory.Exists(parent)) return;
        var leftovers = Directory.EnumerateDirectories(parent, name + ".*")
            .Select(d => (Path: d, Tag: Path.GetFileName(d)[name.Length..]))
            .Where(d => (d.Tag.StartsWith(TmpTag, StringComparison.Ordinal) || d.Tag.StartsWith(OldTag, StringComparison.Ordinal)) && WriterIsGone(d.Tag))
            .ToList();
        foreach (var (path, tag) in leftovers)
        {
            if (tag.StartsWith(OldTag, StringComparison.Ordinal) && !Directory.Exists(full)) Directory.Move(path, full);
            else Delete(path);
        }
    }

    /// <summary>Whether the process <paramref name="pid"/> is running (a temporary of a running process is not stale).</summary>
    internal static bool IsAlive(int pid)
    {
        if (pid == Environment.ProcessId) return true;
        try
        {
            using var p = Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException) { return false; }
        catch (InvalidOperationException) { return false; }
    }

    /// <summary>".tmp-PID.N" / ".old-PID.N" of a process that is gone (this process's own are in use).</summary>
    private static bool WriterIsGone(string tag)
    {
        var pid = tag[TmpTag.Length..].Split('.')[0];
        return int.TryParse(pid, out int id) && id != Environment.ProcessId && !IsAlive(id);
    }

    private static void CopyMissing(string from, string to)
    {
        foreach (var file in Directory.EnumerateFiles(from))
        {
            string target = Path.Combine(to, Path.GetFileName(file));
            if (!File.Exists(target) && !Directory.Exists(target)) File.Copy(file, target);
        }
        foreach (var dir in Directory.EnumerateDirectories(from))
        {
            string target = Path.Combine(to, Path.GetFileName(dir));
            if (File.Exists(target)) continue;
            Directory.CreateDirectory(target);
            CopyMissing(dir, target);
        }
    }

    private static void Delete(string path)
    {
        try { if (Directory.Exists(path)) Directory.Delete(path, recursive: true); }
        catch (IOException) { } // a leftover is removed by the next save
        catch (UnauthorizedAccessException) { }
    }
}
