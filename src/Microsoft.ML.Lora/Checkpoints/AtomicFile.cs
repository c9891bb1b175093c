namespace Microsoft.ML.Lora.Checkpoints;

/// <summary>
/// Writes a file through a temporary sibling (<c>.NAME.PID.GUID.tmp</c>), flushed to disk and renamed over the old
/// one, with the folder flushed after the rename: readers, a kill and a full disk see the old file or the new one,
/// never part of one. Temporaries left by killed processes are removed by the next write of the same file.
/// </summary>
internal static class AtomicFile
{
    public static void Write(string path, Action<Stream> write)
    {
        string full = Path.GetFullPath(path);
        string directory = Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(directory);
        string name = Path.GetFileName(full);
        RemoveStale(directory, name);
        string temp = Path.Combine(directory, $".{name}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var stream = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                write(stream);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            File.Delete(temp);
            throw;
        }
        Durable.Sync(directory); // the rename itself must survive a power loss too
    }

    public static void WriteAllText(string path, string text) =>
        Write(path, s => { using var w = new StreamWriter(s, new System.Text.UTF8Encoding(false), leaveOpen: true); w.Write(text); });

    /// <summary>Deletes the temporaries of <paramref name="name"/> whose writing process is gone.</summary>
    private static void RemoveStale(string directory, string name)
    {
        foreach (var temp in Directory.EnumerateFiles(directory, $".{name}.*.tmp"))
        {
            var parts = Path.GetFileName(temp)[(name.Length + 2)..].Split('.');
            if (parts.Length == 3 && int.TryParse(parts[0], out int pid) && !AtomicFolder.IsAlive(pid))
                try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }
}
