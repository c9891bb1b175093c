using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Microsoft.ML.Lora.Tokenization;

/// <summary>
/// Builds an <see cref="HfTokenizer"/> from a model folder. Microsoft.ML.Tokenizers cannot read <c>tokenizer.json</c>,
/// so this parses it and maps each component onto Microsoft.ML.Tokenizers (byte-level BPE) or onto the small
/// HF-compatible pieces in this folder where the library has no equivalent.
/// </summary>
internal static class HfTokenizerLoader
{
    public static HfTokenizer Load(string modelFolder)
    {
        if (!Directory.Exists(modelFolder))
            throw new DirectoryNotFoundException($"Tokenizer folder not found: '{modelFolder}'.");
        var configPath = Path.Combine(modelFolder, "tokenizer_config.json");
        using var config = File.Exists(configPath) ? Read(configPath, () => ParseJson(configPath, "a JSON object of tokenizer settings")) : null;
        var cfg = config?.RootElement;

        var jsonPath = Path.Combine(modelFolder, "tokenizer.json");
        if (File.Exists(jsonPath)) return Read(jsonPath, () => FromTokenizerJson(jsonPath, cfg));
        var vocabPath = Path.Combine(modelFolder, "vocab.json");
        var mergesPath = Path.Combine(modelFolder, "merges.txt");
        if (File.Exists(vocabPath) && File.Exists(mergesPath)) return Read(vocabPath, () => FromVocabAndMerges(vocabPath, mergesPath, cfg));
        throw new FileNotFoundException(
            $"No tokenizer files in '{modelFolder}': expected tokenizer.json, or vocab.json and merges.txt.");
    }

    private static HfTokenizer FromTokenizerJson(string path, JsonElement? cfg)
    {
        using var doc = ParseJson(path, "a tokenizer.json written by Hugging Face tokenizers");
        var root = doc.RootElement;
        var file = Path.GetFileName(path);
        if (root.ValueKind != JsonValueKind.Object) throw Corrupt(path, $"the document is a JSON {root.ValueKind}, expected an object with a \"model\"");

        var model = Object(root, "model", path, "the document");
        var modelType = Str(model, "type") ?? (model.TryGetProperty("merges", out _) ? "BPE" : null);
        if (modelType != "BPE") throw Unsupported("model", modelType, path, "only BPE models are supported");
        var flags = BpeModelFlags.Read(model, path);
        var vocab = new Dictionary<string, int>();
        var vocabJson = Object(model, "vocab", path, "\"model\"");
        foreach (var p in vocabJson.EnumerateObject())
            vocab[p.Name] = p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetInt32(out int id) && id >= 0
                ? id : throw Corrupt(path, $"the id of \"{p.Name}\" in model.vocab is {p.Value.GetRawText()}, expected an integer 0 or above");
        var merges = new List<(string, string)>();
        int index = 0;
        foreach (var m in Member(model, "merges", JsonValueKind.Array, path, "\"model\"").EnumerateArray())
        {
            if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                merges.Add((m[0].GetString()!, m[1].GetString()!));
            else if (m.ValueKind == JsonValueKind.String && SplitMerge(m.GetString()!) is { } pair)
                merges.Add(pair);
            else
                throw Corrupt(path, $"model.merges[{index}] is {m.GetRawText()}, expected \"a b\" (two tokens and one space) or [\"a\", \"b\"]");
            CheckMerge(vocab, merges[^1], path, $"model.merges[{index}]");
            index++;
        }

        var added = new List<AddedToken>();
        if (root.TryGetProperty("added_tokens", out var at) && at.ValueKind == JsonValueKind.Array)
            foreach (var t in at.EnumerateArray())
                added.Add(new AddedToken(Member(t, "id", JsonValueKind.Number, path, "an entry of added_tokens").GetInt32(),
                    Member(t, "content", JsonValueKind.String, path, "an entry of added_tokens").GetString()!,
                    t.TryGetProperty("special", out var sp) && sp.ValueKind == JsonValueKind.True));

        var normalizer = Component(root, "normalizer", n => Normalizer(n, path));
        var preSteps = Component(root, "pre_tokenizer", p => PreTokenizer(p, path)) ?? [];
        var decoder = Component(root, "decoder", d => Decoder(d, path));
        var byteLevel = preSteps.OfType<ByteLevelStep>().Any();
        var preTokenizer = new HfPreTokenizer(preSteps);

        IBpeModel bpe;
        if (byteLevel)
        {
            if (flags.ByteFallback)
                throw new NotSupportedException($"Unsupported model flag 'byte_fallback: true' with a ByteLevel pre-tokenizer in '{path}': " +
                    "byte-level BPE already covers every byte.");
            bpe = new ByteLevelBpe(vocab, merges.Select(m => m.Item1 + " " + m.Item2), preTokenizer, flags.IgnoreMerges);
        }
        else
            bpe = new SentencePieceBpe(vocab, merges, flags, Str(model, "unk_token"), preSteps.Count == 0 ? null : preTokenizer);

        var (prefix, suffix) = PostProcessor(root, vocab, added, path, file);
        return Build(vocab, added, normalizer, bpe, decoder, prefix, suffix, cfg);
    }

    private static HfTokenizer FromVocabAndMerges(string vocabPath, string mergesPath, JsonElement? cfg)
    {
        Dictionary<string, int>? vocab;
        var bytes = File.ReadAllBytes(vocabPath);
        try { vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(bytes); }
        catch (JsonException e) { throw Corrupt(vocabPath, $"{JsonProblem(e, bytes)}; expected a JSON object of token → id (an integer)", e); }
        if (vocab is null) throw Corrupt(vocabPath, "it is null, expected a JSON object of token → id");
        if (vocab.FirstOrDefault(p => p.Value < 0) is { Key: not null } negative)
            throw Corrupt(vocabPath, $"the id of \"{negative.Key}\" is {negative.Value}, expected 0 or above");
        var merges = new List<string>();
        int line = 0;
        foreach (var l in File.ReadLines(mergesPath))
        {
            line++;
            if (l.Length == 0 || l.StartsWith("#version", StringComparison.Ordinal)) continue;
            var pair = SplitMerge(l) ?? throw Corrupt(mergesPath, $"line {line} is \"{l}\", expected two tokens separated by one space");
            CheckMerge(vocab, pair, mergesPath, $"line {line}");
            merges.Add(l);
        }
        var pre = new HfPreTokenizer([new ByteLevelStep(Bool(cfg, "add_prefix_space") ?? false, true)]);
        var bpe = new ByteLevelBpe(vocab, merges, pre);
        // GPT2Tokenizer-style folders: the config's bos/eos/unk/pad tokens are the special tokens.
        var added = new[] { "bos_token", "eos_token", "unk_token", "pad_token" }
            .Select(k => TokenString(cfg, k)).OfType<string>().Distinct()
            .Where(vocab.ContainsKey).Select(t => new AddedToken(vocab[t], t, true)).ToList();
        return Build(vocab, added, null, bpe, new ByteLevelDecoder(), [], [], cfg);
    }

    private static HfTokenizer Build(Dictionary<string, int> vocab, List<AddedToken> added, TextNormalizer? normalizer,
        IBpeModel bpe, TokenDecoder? decoder, int[] prefix, int[] suffix, JsonElement? cfg)
    {
        var size = Math.Max(vocab.Count == 0 ? 0 : vocab.Values.Max() + 1, added.Count == 0 ? 0 : added.Max(a => a.Id) + 1);
        var idToToken = new string?[size];
        foreach (var (t, id) in vocab) idToToken[id] = t;
        foreach (var a in added) idToToken[a.Id] = a.Content;
        int? Id(string key)
        {
            var t = TokenString(cfg, key);
            if (t is null) return null;
            var a = added.FirstOrDefault(x => x.Content == t);
            return a is not null ? a.Id : vocab.TryGetValue(t, out var id) ? id : null;
        }
        int? bos = Id("bos_token"), eos = Id("eos_token"), pad = Id("pad_token");

        // Llama-style tokenizer classes rebuild their post-processor from add_bos_token/add_eos_token.
        var cls = Str(cfg, "tokenizer_class") ?? "";
        if (cls.StartsWith("Llama", StringComparison.Ordinal) || cls.StartsWith("CodeLlama", StringComparison.Ordinal)
            || cls.StartsWith("Gemma", StringComparison.Ordinal))
        {
            if (Bool(cfg, "add_bos_token") is { } addBos) prefix = addBos && bos is { } b ? [b] : [];
            if (Bool(cfg, "add_eos_token") is { } addEos) suffix = addEos && eos is { } e ? [e] : [];
        }
        var special = added.Where(a => a.Special).Select(a => a.Id).ToHashSet();
        return new HfTokenizer(new AddedTokenSplitter(added), normalizer, bpe, decoder, idToToken, special,
            prefix, suffix, Bool(cfg, "clean_up_tokenization_spaces") ?? false, bos, eos, pad);
    }

    private static (int[] Prefix, int[] Suffix) PostProcessor(JsonElement root, Dictionary<string, int> vocab,
        List<AddedToken> added, string path, string file)
    {
        if (!root.TryGetProperty("post_processor", out var pp) || pp.ValueKind == JsonValueKind.Null) return ([], []);
        switch (Str(pp, "type"))
        {
            case "ByteLevel": return ([], []);
            case "Sequence":
                var pre = new List<int>();
                var suf = new List<int>();
                foreach (var p in pp.GetProperty("processors").EnumerateArray())
                {
                    using var one = JsonDocument.Parse($"{{\"post_processor\":{p.GetRawText()}}}");
                    var (a, b) = PostProcessor(one.RootElement, vocab, added, path, file);
                    pre.AddRange(a);
                    suf.AddRange(b);
                }
                return (pre.ToArray(), suf.ToArray());
            case "TemplateProcessing":
                var prefix = new List<int>();
                var suffix = new List<int>();
                var seen = false;
                var specials = pp.GetProperty("special_tokens");
                foreach (var piece in pp.GetProperty("single").EnumerateArray())
                {
                    if (piece.TryGetProperty("Sequence", out _)) { seen = true; continue; }
                    var name = piece.GetProperty("SpecialToken").GetProperty("id").GetString()!;
                    var ids = specials.GetProperty(name).GetProperty("ids").EnumerateArray().Select(i => i.GetInt32());
                    (seen ? suffix : prefix).AddRange(ids);
                }
                return (prefix.ToArray(), suffix.ToArray());
            default:
                throw Unsupported("post_processor", Str(pp, "type"), path);
        }
    }

    private static TextNormalizer Normalizer(JsonElement n, string path) => Str(n, "type") switch
    {
        "NFC" => new UnicodeNormalizer(NormalizationForm.FormC),
        "NFD" => new UnicodeNormalizer(NormalizationForm.FormD),
        "NFKC" => new UnicodeNormalizer(NormalizationForm.FormKC),
        "NFKD" => new UnicodeNormalizer(NormalizationForm.FormKD),
        "Prepend" => new PrependNormalizer(n.GetProperty("prepend").GetString()!),
        "Replace" => new ReplaceNormalizer(StringPattern(n, "Replace normalizer", path), n.GetProperty("content").GetString()!),
        "Sequence" => new SequenceNormalizer(n.GetProperty("normalizers").EnumerateArray().Select(x => Normalizer(x, path)).ToList()),
        var t => throw Unsupported("normalizer", t, path),
    };

    private static List<PreTokenizeStep> PreTokenizer(JsonElement p, string path)
    {
        switch (Str(p, "type"))
        {
            case "Sequence":
                return p.GetProperty("pretokenizers").EnumerateArray().SelectMany(x => PreTokenizer(x, path)).ToList();
            case "ByteLevel":
                return [new ByteLevelStep(Bool(p, "add_prefix_space") ?? false, Bool(p, "use_regex") ?? true)];
            case "Metaspace":
                var scheme = (Str(p, "prepend_scheme") ?? ((Bool(p, "add_prefix_space") ?? true) ? "always" : "never")) switch
                {
                    "always" => MetaspaceStep.Scheme.Always,
                    "first" => MetaspaceStep.Scheme.First,
                    "never" => MetaspaceStep.Scheme.Never,
                    var s => throw Unsupported("Metaspace prepend_scheme", s, path),
                };
                return [new MetaspaceStep(Replacement(p), scheme, Bool(p, "split") ?? true)];
            case "Split":
                var pattern = p.GetProperty("pattern");
                var regex = pattern.TryGetProperty("Regex", out var r)
                    ? SplitStep.FlattenNestedClasses(r.GetString()!)
                    : Regex.Escape(pattern.GetProperty("String").GetString()!);
                var behavior = Str(p, "behavior") switch
                {
                    "Removed" => SplitBehavior.Removed,
                    "Isolated" => SplitBehavior.Isolated,
                    "MergedWithPrevious" => SplitBehavior.MergedWithPrevious,
                    "MergedWithNext" => SplitBehavior.MergedWithNext,
                    "Contiguous" => SplitBehavior.Contiguous,
                    var b => throw Unsupported("Split behavior", b, path),
                };
                Regex compiled;
                // A pattern from a file runs with a timeout: a catastrophically backtracking one (time doubling per
                // character) would otherwise hang Encode; SplitStep turns a timeout into an error naming file and pattern.
                try { compiled = new Regex(regex, RegexOptions.Compiled | RegexOptions.CultureInvariant, SplitStep.MatchTimeout); }
                catch (ArgumentException e) { throw new InvalidDataException($"'{path}': the Split pre-tokenizer's pattern \"{regex}\" is not a valid .NET regular expression: {e.Message}", e); }
                return [new SplitStep(compiled, behavior, Bool(p, "invert") ?? false, path)];
            case var t:
                throw Unsupported("pre_tokenizer", t, path);
        }
    }

    private static TokenDecoder Decoder(JsonElement d, string path) => Str(d, "type") switch
    {
        "ByteLevel" => new ByteLevelDecoder(),
        "ByteFallback" => new ByteFallbackDecoder(),
        "Fuse" => new FuseDecoder(),
        "Replace" => new ReplaceDecoder(StringPattern(d, "Replace decoder", path), d.GetProperty("content").GetString()!),
        "Strip" => new StripDecoder(d.GetProperty("content").GetString()![0], d.GetProperty("start").GetInt32(), d.GetProperty("stop").GetInt32()),
        "Metaspace" => new MetaspaceDecoder(Replacement(d),
            (Str(d, "prepend_scheme") ?? ((Bool(d, "add_prefix_space") ?? true) ? "always" : "never")) != "never"),
        "Sequence" => new SequenceDecoder(d.GetProperty("decoders").EnumerateArray().Select(x => Decoder(x, path)).ToList()),
        var t => throw Unsupported("decoder", t, path),
    };

    private static T? Component<T>(JsonElement root, string name, Func<JsonElement, T> build) where T : class =>
        root.TryGetProperty(name, out var e) && e.ValueKind == JsonValueKind.Object ? build(e) : null;

    private static char Replacement(JsonElement e) => (Str(e, "replacement") ?? "▁")[0];

    private static string StringPattern(JsonElement e, string what, string path) =>
        e.GetProperty("pattern").TryGetProperty("String", out var s)
            ? s.GetString()!
            : throw Unsupported(what, "with a Regex pattern", path);

    private static NotSupportedException Unsupported(string component, string? type, string path, string? expected = null) =>
        new($"Unsupported {component} '{type ?? "(none)"}' in '{path}'{(expected is null ? "" : ": " + expected)}.");

    /// <summary>
    /// Runs the reading of <paramref name="path"/>; what a malformed file makes System.Text.Json or the reading code
    /// throw (a missing member, a value of the wrong kind) becomes a <see cref="ModelLoadException"/> naming the file.
    /// </summary>
    private static T Read<T>(string path, Func<T> read)
    {
        try { return read(); }
        catch (Exception e) when (e is KeyNotFoundException or InvalidOperationException or FormatException
            or IndexOutOfRangeException or ArgumentOutOfRangeException or NullReferenceException)
        {
            throw Corrupt(path, $"a member is missing or of the wrong kind ({e.Message})", e);
        }
    }

    private static JsonDocument ParseJson(string path, string expected)
    {
        var bytes = File.ReadAllBytes(path);
        try { return JsonDocument.Parse(bytes); }
        catch (JsonException e) { throw Corrupt(path, $"{JsonProblem(e, bytes)}; expected {expected}", e); }
    }

    private static string JsonProblem(JsonException e, byte[] bytes) =>
        $"it is not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}{(EndsEarly(e, bytes) ? ": the file ends early, is it truncated?" : "")})";

    /// <summary>Whether System.Text.Json stopped at the very end of <paramref name="bytes"/>: the document is cut short.</summary>
    private static bool EndsEarly(JsonException e, byte[] bytes)
    {
        int lastNewline = Array.LastIndexOf(bytes, (byte)'\n');
        long lines = bytes.Count(b => b == (byte)'\n');
        return e.LineNumber == lines && e.BytePositionInLine >= bytes.Length - (lastNewline + 1);
    }

    private static ModelLoadException Corrupt(string path, string problem, Exception? inner = null) =>
        new($"Cannot read the tokenizer file '{path}': {problem}.", path, innerException: inner);

    /// <summary>The member <paramref name="name"/> of <paramref name="e"/> (described as <paramref name="where"/>), which must be an object.</summary>
    private static JsonElement Object(JsonElement e, string name, string path, string where) => Member(e, name, JsonValueKind.Object, path, where);

    private static JsonElement Member(JsonElement e, string name, JsonValueKind kind, string path, string where)
    {
        if (e.ValueKind != JsonValueKind.Object || !e.TryGetProperty(name, out var v))
            throw Corrupt(path, $"{where} has no \"{name}\"");
        if (v.ValueKind != kind)
            throw Corrupt(path, $"\"{name}\" in {where} is a JSON {v.ValueKind}, expected {(kind == JsonValueKind.Object ? "an" : "a")} {kind}");
        return v;
    }

    /// <summary>As Hugging Face tokenizers: both tokens of a merge and their concatenation must be in the vocabulary.</summary>
    private static void CheckMerge(Dictionary<string, int> vocab, (string A, string B) merge, string path, string where)
    {
        foreach (var token in new[] { merge.A, merge.B, merge.A + merge.B })
            if (!vocab.ContainsKey(token))
                throw Corrupt(path, $"{where} (\"{merge.A} {merge.B}\") uses \"{token}\", which is not in the vocabulary");
    }

    /// <summary>"a b": two non-empty tokens around one space, or null.</summary>
    private static (string, string)? SplitMerge(string line)
    {
        int sp = line.IndexOf(' ');
        return sp > 0 && sp < line.Length - 1 && line.IndexOf(' ', sp + 1) < 0 ? (line[..sp], line[(sp + 1)..]) : null;
    }

    private static string? Str(JsonElement? e, string name) =>
        e is { ValueKind: JsonValueKind.Object } o && o.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String
            ? v.GetString() : null;

    private static bool? Bool(JsonElement? e, string name) =>
        e is { ValueKind: JsonValueKind.Object } o && o.TryGetProperty(name, out var v)
            && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;

    /// <summary>A special-token entry of tokenizer_config.json: a string or an AddedToken object with "content".</summary>
    private static string? TokenString(JsonElement? cfg, string name)
    {
        if (cfg is not { ValueKind: JsonValueKind.Object } o || !o.TryGetProperty(name, out var v)) return null;
        return v.ValueKind switch
        {
            JsonValueKind.String => v.GetString(),
            JsonValueKind.Object when v.TryGetProperty("content", out var c) => c.GetString(),
            _ => null,
        };
    }
}
