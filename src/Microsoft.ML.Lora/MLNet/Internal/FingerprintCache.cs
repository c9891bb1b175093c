using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.ML.Lora.Checkpoints;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// Base-model fingerprints kept across processes, so that loading a saved model does not read every byte of a large
/// checkpoint again: one small JSON file per base folder under $MLLORA_CACHE (default: the user's local application
/// data folder, mllora/fingerprints), holding the folder, the stamp of its files (<see cref="FileStamp"/>) and the
/// fingerprint. A stored fingerprint is used only when every file still has the stamp it had when it was hashed.
/// Unreadable or unwritable cache files are ignored (the fingerprint is then computed).
/// </summary>
internal static class FingerprintCache
{
    private sealed record Entry(string Folder, string Stamp, string Fingerprint);

    public static string Root =>
        Environment.GetEnvironmentVariable("MLLORA_CACHE") is { Length: > 0 } root
            ? Path.Combine(root, "fingerprints")
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create), "mllora", "fingerprints");

    public static string PathOf(string folder) =>
        Path.Combine(Root, Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(folder))).ToLowerInvariant()[..32] + ".json");

    public static string? TryRead(string folder, string stamp)
    {
        try
        {
            string path = PathOf(folder);
            if (!File.Exists(path)) return null;
            var entry = JsonSerializer.Deserialize<Entry>(File.ReadAllText(path));
            return entry is not null && entry.Folder == folder && entry.Stamp == stamp ? entry.Fingerprint : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException) { return null; }
    }

    public static void Write(string folder, string stamp, string fingerprint)
    {
        try
        {
            string path = PathOf(folder);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            AtomicFile.WriteAllText(path, JsonSerializer.Serialize(new Entry(folder, stamp, fingerprint)));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }
}
