using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>What the TorchSharp backend needs from the base model's tokenizer.</summary>
internal interface IBackendTokenizer
{
    /// <summary>Token ids of <paramref name="text"/>; <paramref name="addSpecialTokens"/> adds what the model's post-processor adds (BOS).</summary>
    int[] Encode(string text, bool addSpecialTokens);

    /// <summary>Text of <paramref name="ids"/>, special tokens (EOS, padding) left out.</summary>
    string Decode(IReadOnlyList<int> ids);

    /// <summary>Id of the end-of-sequence token, when the tokenizer names one.</summary>
    int? EosId { get; }
}

/// <summary>
/// Opens the tokenizer of a base model folder. Until the Tokenization branch is wired in, this reads byte-level BPE
/// tokenizer.json files (GPT-2, BLOOM style: ByteLevel pre-tokenizer and decoder, vocab + merges, added tokens).
/// </summary>
internal static class BackendTokenizer
{
    public static IBackendTokenizer Load(string folder) => ByteLevelBpeTokenizer.Load(folder);
}

/// <summary>Minimal byte-level BPE tokenizer read from tokenizer.json (GPT-2 pre-tokenization regex).</summary>
internal sealed partial class ByteLevelBpeTokenizer : IBackendTokenizer
{
    private static readonly char[] ByteToChar = BuildByteToChar();
    private static readonly Dictionary<char, byte> CharToByte = Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    private readonly Dictionary<string, int> _vocab;
    private readonly string?[] _idToToken;
    private readonly Dictionary<(string, string), int> _ranks;
    private readonly Dictionary<string, int> _special;
    private readonly HashSet<int> _specialIds;
    private readonly Regex? _specialSplit;

    private ByteLevelBpeTokenizer(Dictionary<string, int> vocab, Dictionary<(string, string), int> ranks, Dictionary<string, int> special, int? eos)
    {
        _vocab = vocab;
        _ranks = ranks;
        _special = special;
        _specialIds = [.. special.Values];
        int size = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, special.Count == 0 ? 0 : special.Values.Max() + 1);
        _idToToken = new string?[size];
        foreach (var (t, i) in vocab) _idToToken[i] = t;
        foreach (var (t, i) in special) _idToToken[i] = t;
        _specialSplit = special.Count == 0 ? null
            : new Regex("(" + string.Join("|", special.Keys.OrderByDescending(k => k.Length).Select(Regex.Escape)) + ")", RegexOptions.CultureInvariant);
        EosId = eos;
    }

    public int? EosId { get; }

    public static ByteLevelBpeTokenizer Load(string folder)
    {
        var path = Path.Combine(folder, "tokenizer.json");
        if (!File.Exists(path)) throw new FileNotFoundException($"The base model folder '{folder}' has no tokenizer.json.", path);
        var json = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
        var model = json["model"]?.AsObject() ?? throw new InvalidDataException($"'{path}' has no model.");
        if (model["type"]?.GetValue<string>() is { } type && type != "BPE")
            throw new NotSupportedException($"'{path}': model type '{type}' is not supported (byte-level BPE only).");
        var vocab = model["vocab"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.GetValue<int>(), StringComparer.Ordinal);
        var ranks = new Dictionary<(string, string), int>();
        if (model["merges"] is JsonArray merges)
            for (int i = 0; i < merges.Count; i++)
            {
                (string a, string b) pair = merges[i] switch
                {
                    JsonArray arr => (arr[0]!.GetValue<string>(), arr[1]!.GetValue<string>()),
                    var v => v!.GetValue<string>().Split(' ', 2) is [var x, var y] ? (x, y) : throw new InvalidDataException($"'{path}': bad merge {v}."),
                };
                ranks.TryAdd(pair, i);
            }
        var special = new Dictionary<string, int>(StringComparer.Ordinal);
        if (json["added_tokens"] is JsonArray added)
            foreach (var t in added)
                special[t!["content"]!.GetValue<string>()] = t["id"]!.GetValue<int>();

        int? eos = null;
        var configPath = Path.Combine(folder, "tokenizer_config.json");
        if (File.Exists(configPath) && JsonNode.Parse(File.ReadAllText(configPath)) is JsonObject tc)
        {
            string? eosText = tc["eos_token"] switch
            {
                JsonValue v => v.GetValue<string>(),
                JsonObject o => o["content"]?.GetValue<string>(),
                _ => null,
            };
            if (eosText != null && (special.TryGetValue(eosText, out int e) || vocab.TryGetValue(eosText, out e))) eos = e;
        }
        return new ByteLevelBpeTokenizer(vocab, ranks, special, eos);
    }

    public int[] Encode(string text, bool addSpecialTokens)
    {
        var ids = new List<int>();
        var segments = _specialSplit is null ? [text] : _specialSplit.Split(text);
        foreach (var segment in segments)
        {
            if (segment.Length == 0) continue;
            if (_special.TryGetValue(segment, out int sid)) { ids.Add(sid); continue; }
            foreach (Match m in Gpt2Split().Matches(segment))
            {
                var bytes = Encoding.UTF8.GetBytes(m.Value);
                var word = bytes.Select(b => ByteToChar[b].ToString()).ToList();
                Bpe(word);
                foreach (var piece in word)
                {
                    if (_vocab.TryGetValue(piece, out int id)) ids.Add(id);
                    else foreach (var ch in piece) ids.Add(_vocab.TryGetValue(ch.ToString(), out int cid) ? cid
                        : throw new InvalidDataException($"The tokenizer has no token for byte symbol '{ch}'."));
                }
            }
        }
        return [.. ids];
    }

    private void Bpe(List<string> word)
    {
        if (_ranks.Count == 0) return;
        while (word.Count > 1)
        {
            int best = -1, bestRank = int.MaxValue;
            for (int i = 0; i + 1 < word.Count; i++)
                if (_ranks.TryGetValue((word[i], word[i + 1]), out int r) && r < bestRank) { bestRank = r; best = i; }
            if (best < 0) break;
            word[best] += word[best + 1];
            word.RemoveAt(best + 1);
        }
    }

    public string Decode(IReadOnlyList<int> ids)
    {
        var bytes = new List<byte>();
        foreach (var id in ids)
        {
            if (_specialIds.Contains(id) || id < 0 || id >= _idToToken.Length || _idToToken[id] is not { } token) continue;
            foreach (var ch in token)
                if (CharToByte.TryGetValue(ch, out byte b)) bytes.Add(b);
                else bytes.AddRange(Encoding.UTF8.GetBytes(ch.ToString()));
        }
        return Encoding.UTF8.GetString([.. bytes]);
    }

    [GeneratedRegex(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+", RegexOptions.CultureInvariant)]
    private static partial Regex Gpt2Split();

    /// <summary>GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to 256 + n.</summary>
    internal static char[] BuildByteToChar()
    {
        var map = new char[256];
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? (char)b : (char)(256 + n++);
        }
        return map;
    }

    /// <summary>The 256 byte-level symbols in byte order (the vocabulary of a byte-level tokenizer without merges).</summary>
    internal static IReadOnlyList<string> ByteSymbols => [.. ByteToChar.Select(c => c.ToString())];
}
