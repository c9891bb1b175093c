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
        using var config = File.Exists(configPath) ? JsonDocument.Parse(File.ReadAllBytes(configPath)) : null;
        var cfg = config?.RootElement;

        var jsonPath = Path.Combine(modelFolder, "tokenizer.json");
        if (File.Exists(jsonPath)) return FromTokenizerJson(jsonPath, cfg);
        var vocabPath = Path.Combine(modelFolder, "vocab.json");
        var mergesPath = Path.Combine(modelFolder, "merges.txt");
        if (File.Exists(vocabPath) && File.Exists(mergesPath)) return FromVocabAndMerges(vocabPath, mergesPath, cfg);
        throw new FileNotFoundException(
            $"No tokenizer files in '{modelFolder}': expected tokenizer.json, or vocab.json and merges.txt.");
    }

    private static HfTokenizer FromTokenizerJson(string path, JsonElement? cfg)
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(path));
        var root = doc.RootElement;
        var file = Path.GetFileName(path);

        var model = root.GetProperty("model");
        var modelType = Str(model, "type") ?? (model.TryGetProperty("merges", out _) ? "BPE" : null);
        if (modelType != "BPE") throw Unsupported("model", modelType, path);
        var flags = BpeModelFlags.Read(model, path);
        var vocab = new Dictionary<string, int>();
        foreach (var p in model.GetProperty("vocab").EnumerateObject()) vocab[p.Name] = p.Value.GetInt32();
        var merges = new List<(string, string)>();
        foreach (var m in model.GetProperty("merges").EnumerateArray())
        {
            if (m.ValueKind == JsonValueKind.Array) merges.Add((m[0].GetString()!, m[1].GetString()!));
            else
            {
                var s = m.GetString()!;
                var sp = s.IndexOf(' ');
                merges.Add((s[..sp], s[(sp + 1)..]));
            }
        }

        var added = new List<AddedToken>();
        if (root.TryGetProperty("added_tokens", out var at) && at.ValueKind == JsonValueKind.Array)
            foreach (var t in at.EnumerateArray())
                added.Add(new AddedToken(t.GetProperty("id").GetInt32(), t.GetProperty("content").GetString()!,
                    t.TryGetProperty("special", out var sp) && sp.GetBoolean()));

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
        var vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllBytes(vocabPath))
            ?? throw new InvalidDataException($"'{vocabPath}' is not a JSON object of token → id.");
        var merges = File.ReadLines(mergesPath).Where(l => l.Length > 0 && !l.StartsWith("#version", StringComparison.Ordinal));
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

    private static NotSupportedException Unsupported(string component, string? type, string path) =>
        new($"Unsupported {component} '{type ?? "(none)"}' in '{path}'.");

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
