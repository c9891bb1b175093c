using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// What a saved model keeps of its base model: the folder (absolute, and as the user gave it) and a fingerprint of its
/// config and weights (SHA-256 over the names, sizes and bytes of config.json, the tokenizer files and every
/// *.safetensors file of the folder, in ordinal order).
/// </summary>
/// <param name="Folder">Absolute path of the folder when the model was trained.</param>
/// <param name="Fingerprint">"sha256:" + hex.</param>
/// <param name="GivenFolder">The folder as the user gave it (may be relative); null in models saved before it existed.</param>
internal sealed record BaseModelReference(string Folder, string Fingerprint, string? GivenFolder = null)
{
    private static readonly ConcurrentDictionary<string, (string Stamp, string Fingerprint)> Cache = new();

    /// <summary>Forgets the fingerprints kept in this process (tests of the cache file).</summary>
    internal static void ClearProcessCache() => Cache.Clear();

    /// <summary>Fingerprints <paramref name="folder"/>; throws naming the folder when it or its config.json is missing.</summary>
    public static BaseModelReference Of(string folder)
    {
        if (string.IsNullOrWhiteSpace(folder))
            throw new ArgumentException("The base model folder is not set (LoraCausalLmOptions.BaseModelFolder).", nameof(folder));
        string full = Path.GetFullPath(folder);
        return new BaseModelReference(full, ComputeFingerprint(full), folder);
    }

    /// <summary>
    /// The folder to load at <paramref name="overrides"/>: the override when given; else the folder as given, a relative
    /// one first beside the zip (when loaded through <c>mlContext.Lora().LoadModel</c>) then in the current folder; else
    /// the absolute folder of training. The first that exists; the fingerprint is checked by <see cref="Verify"/>.
    /// </summary>
    public BaseModelReference Resolve(ModelLoadOverrides? overrides)
    {
        if (overrides?.BaseModelFolder is { } forced)
            return this with { Folder = Path.GetFullPath(forced), GivenFolder = forced };
        var candidates = new List<string>();
        if (GivenFolder is { Length: > 0 } given)
        {
            if (Path.IsPathRooted(given)) candidates.Add(given);
            else
            {
                if (overrides?.ZipFolder is { } zip) candidates.Add(Path.Combine(zip, given));
                candidates.Add(Path.GetFullPath(given));
            }
        }
        candidates.Add(Folder);
        string found = candidates.FirstOrDefault(Directory.Exists) ?? candidates[0];
        return this with { Folder = Path.GetFullPath(found) };
    }

    /// <summary>Throws naming the folder when it is missing or its fingerprint differs from the saved one.</summary>
    public void Verify()
    {
        string actual = ComputeFingerprint(Folder);
        if (!string.Equals(actual, Fingerprint, StringComparison.Ordinal))
            throw new InvalidOperationException(
                $"The base model folder '{Folder}' differs from the one the adapter was trained on: its config.json, tokenizer files or weights changed " +
                $"(fingerprint {actual}, expected {Fingerprint}).");
    }

    /// <summary>Besides the weights: the config and every tokenizer file the library reads.</summary>
    private static readonly HashSet<string> Fingerprinted = new(StringComparer.Ordinal)
        { "config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt" };

    internal static string ComputeFingerprint(string folder)
    {
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"The base model folder '{folder}' does not exist.");
        var files = Directory.EnumerateFiles(folder)
            .Where(f => Fingerprinted.Contains(Path.GetFileName(f)) || f.EndsWith(".safetensors", StringComparison.Ordinal))
            .OrderBy(f => Path.GetFileName(f), StringComparer.Ordinal)
            .ToList();
        if (!files.Any(f => Path.GetFileName(f) == "config.json"))
            throw new FileNotFoundException($"The base model folder '{folder}' has no config.json.", Path.Combine(folder, "config.json"));

        // Hashing multi-gigabyte weights takes about a second per GiB: reuse a result while no file was rewritten.
        // The stamp holds what a rewrite changes (size, mtime, ctime, inode; FileStamp), so a same-size rewrite with
        // its old mtime put back is still seen. Kept in this process and in a cache file per folder (FingerprintCache).
        string stamp = string.Join("|", files.Select(f => Path.GetFileName(f) + ":" + FileStamp.Of(f)));
        if (Cache.TryGetValue(folder, out var cached) && cached.Stamp == stamp)
            return cached.Fingerprint;
        if (FingerprintCache.TryRead(folder, stamp) is { } stored)
        {
            Cache[folder] = (stamp, stored);
            return stored;
        }

        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        foreach (var file in files)
        {
            sha.AppendData(Encoding.UTF8.GetBytes(Path.GetFileName(file) + "\n"));
            using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
            sha.AppendData(BitConverter.GetBytes(stream.Length));
            int read;
            while ((read = stream.Read(buffer, 0, buffer.Length)) > 0)
                sha.AppendData(buffer, 0, read);
        }
        string fingerprint = "sha256:" + Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
        // Files rewritten while they were read change their stamp: then the result is not kept.
        string after = string.Join("|", files.Select(f => Path.GetFileName(f) + ":" + FileStamp.Of(f)));
        if (after == stamp)
        {
            Cache[folder] = (stamp, fingerprint);
            FingerprintCache.Write(folder, stamp, fingerprint);
        }
        return fingerprint;
    }

    private const string FileName = "BaseModel.json";
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    /// <summary>Writes BaseModel.json into the transformer's folder of a model zip.</summary>
    public void Save(ModelSaveContext ctx) => ctx.SaveTextStream(FileName, w => w.Write(JsonSerializer.Serialize(this, Json)));

    /// <summary>Reads BaseModel.json from a model zip; <paramref name="owner"/> names the transformer in errors. Not verified.</summary>
    public static BaseModelReference Load(ModelLoadContext ctx, string owner)
    {
        string? text = null;
        if (!ctx.TryLoadTextStream(FileName, r => text = r.ReadToEnd()) || text == null)
            throw new InvalidDataException($"'{FileName}' is missing from the {owner} model.");
        return JsonSerializer.Deserialize<BaseModelReference>(text, Json) ?? throw new InvalidDataException($"{FileName} of {owner} is empty.");
    }
}
