using System.Diagnostics;

namespace Microsoft.ML.Lora.Tokenization;

/// <summary>Which end of a sequence receives the padding in <see cref="HfTokenizer.EncodeBatch"/>.</summary>
public enum PaddingSide
{
    /// <summary>Pad after the tokens (training).</summary>
    Right,
    /// <summary>Pad before the tokens (batched generation with a causal LM).</summary>
    Left,
}

/// <summary>A padded batch: one row of ids and one row of attention mask (1 = token, 0 = padding) per text.</summary>
/// <param name="InputIds">Token ids, every row of the same length.</param>
/// <param name="AttentionMask">1 where <paramref name="InputIds"/> holds a token, 0 where it holds padding.</param>
public sealed record BatchEncoding(int[][] InputIds, int[][] AttentionMask);

/// <summary>A token with the span of the input text it came from (empty for tokens the post-processor adds).</summary>
/// <param name="Id">Token id.</param>
/// <param name="Start">Offset of the first char in the input string.</param>
/// <param name="Length">Number of chars.</param>
public readonly record struct TokenSpan(int Id, int Start, int Length);

/// <summary>
/// A Hugging Face tokenizer read from a model folder (<c>tokenizer.json</c>, or <c>vocab.json</c> + <c>merges.txt</c>,
/// with <c>tokenizer_config.json</c>). Encodes and decodes as the <c>tokenizers</c>/<c>transformers</c> libraries do.
/// </summary>
public sealed class HfTokenizer
{
    private readonly AddedTokenSplitter _splitter;
    private readonly TextNormalizer? _normalizer;
    private readonly IBpeModel _model;
    private readonly TokenDecoder? _decoder;
    private readonly string?[] _idToToken;
    private readonly HashSet<int> _specialIds;
    private readonly int[] _prefix, _suffix;
    private readonly bool _cleanUp;

    internal HfTokenizer(AddedTokenSplitter splitter, TextNormalizer? normalizer, IBpeModel model, TokenDecoder? decoder,
        string?[] idToToken, HashSet<int> specialIds, int[] prefix, int[] suffix, bool cleanUp,
        int? bosId, int? eosId, int? padId)
    {
        _splitter = splitter;
        _normalizer = normalizer;
        _model = model;
        _decoder = decoder;
        _idToToken = idToToken;
        _specialIds = specialIds;
        _prefix = prefix;
        _suffix = suffix;
        _cleanUp = cleanUp;
        BosId = bosId;
        EosId = eosId;
        if (padId is null && eosId is not null)
        {
            padId = eosId;
            Trace.WriteLine($"MLLora tokenizer: no pad_token; padding with the EOS token (id {eosId}).");
        }
        PadId = padId;
    }

    /// <summary>Opens a model folder; see <see cref="HfTokenizerLoader.Load"/> for the files read.</summary>
    public static HfTokenizer Load(string modelFolder) => HfTokenizerLoader.Load(modelFolder);

    /// <summary>Id of <c>bos_token</c>, or null when the model has none.</summary>
    public int? BosId { get; }

    /// <summary>Id of <c>eos_token</c>, or null when the model has none.</summary>
    public int? EosId { get; }

    /// <summary>Id of <c>pad_token</c>; for a causal LM without one, the EOS id.</summary>
    public int? PadId { get; }

    /// <summary>Number of ids: the model vocabulary plus added tokens (<c>len(tokenizer)</c> in transformers).</summary>
    public int VocabSize => _idToToken.Length;

    /// <summary>Text to token ids.</summary>
    /// <param name="text">The text; a lone surrogate is encoded as U+FFFD, as a Rust string (Hugging Face tokenizers) holds it.</param>
    /// <param name="addSpecialTokens">Add what the model's post-processor adds (e.g. BOS), as transformers does by default.</param>
    public int[] Encode(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = ScalarText.ReplaceLoneSurrogates(text);
        var ids = new List<int>();
        if (addSpecialTokens) ids.AddRange(_prefix);
        var atStart = true;
        foreach (var (segment, id) in _splitter.Split(text))
        {
            if (segment is null) ids.Add(id);
            else _model.Encode(_normalizer?.Normalize(segment) ?? segment, ids, atStart);
            atStart = false;
        }
        if (addSpecialTokens) ids.AddRange(_suffix);
        return ids.ToArray();
    }

    /// <summary>
    /// Text to tokens with char offsets, where Microsoft.ML.Tokenizers gives them (byte-level BPE models). Offsets are
    /// in the normalized segment, which is the input text unless a normalizer (e.g. NFC) changed it.
    /// </summary>
    /// <exception cref="NotSupportedException">For SentencePiece-style models, whose offsets are not tracked.</exception>
    public IReadOnlyList<TokenSpan> EncodeWithOffsets(string text, bool addSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(text);
        text = ScalarText.ReplaceLoneSurrogates(text);
        var spans = new List<TokenSpan>();
        if (addSpecialTokens) spans.AddRange(_prefix.Select(id => new TokenSpan(id, 0, 0)));
        var pos = 0;
        foreach (var (segment, id) in _splitter.Split(text))
        {
            if (segment is null)
            {
                var len = _idToToken[id]!.Length;
                spans.Add(new TokenSpan(id, pos, len));
                pos += len;
                continue;
            }
            if (!_model.TryEncodeWithOffsets(_normalizer?.Normalize(segment) ?? segment, pos, spans, pos == 0))
                throw new NotSupportedException("Offsets are available for byte-level BPE tokenizers only.");
            pos += segment.Length;
        }
        if (addSpecialTokens) spans.AddRange(_suffix.Select(id => new TokenSpan(id, text.Length, 0)));
        return spans;
    }

    /// <summary>Encodes several texts, truncates them to <paramref name="maxLength"/> and pads them to a common length.</summary>
    /// <param name="texts">The texts.</param>
    /// <param name="maxLength">Longest row kept (tokens past it are dropped); null for no truncation.</param>
    /// <param name="paddingSide">Where the padding goes.</param>
    /// <param name="addSpecialTokens">As in <see cref="Encode"/>.</param>
    /// <param name="padToMaxLength">Pad every row to <paramref name="maxLength"/> rather than to the longest row.</param>
    public BatchEncoding EncodeBatch(IReadOnlyList<string> texts, int? maxLength = null,
        PaddingSide paddingSide = PaddingSide.Right, bool addSpecialTokens = true, bool padToMaxLength = false)
    {
        ArgumentNullException.ThrowIfNull(texts);
        if (maxLength is <= 0) throw new ArgumentOutOfRangeException(nameof(maxLength), "must be positive");
        var rows = texts.Select(t =>
        {
            var ids = Encode(t, addSpecialTokens);
            return maxLength is { } m && ids.Length > m ? ids[..m] : ids;
        }).ToArray();
        var width = padToMaxLength && maxLength is { } w ? w : rows.Length == 0 ? 0 : rows.Max(r => r.Length);
        var pad = rows.Any(r => r.Length < width)
            ? PadId ?? throw new InvalidOperationException("cannot pad: the tokenizer has neither a pad_token nor an eos_token")
            : 0;
        var inputIds = new int[rows.Length][];
        var mask = new int[rows.Length][];
        for (var i = 0; i < rows.Length; i++)
        {
            var row = rows[i];
            var offset = paddingSide == PaddingSide.Left ? width - row.Length : 0;
            inputIds[i] = new int[width];
            mask[i] = new int[width];
            Array.Fill(inputIds[i], pad);
            row.CopyTo(inputIds[i], offset);
            Array.Fill(mask[i], 1, offset, row.Length);
        }
        return new BatchEncoding(inputIds, mask);
    }

    /// <summary>Token ids to text.</summary>
    /// <param name="ids">The ids.</param>
    /// <param name="skipSpecialTokens">Leave out tokens flagged special (BOS, EOS, pad, ...).</param>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = true)
    {
        ArgumentNullException.ThrowIfNull(ids);
        var tokens = new List<string>();
        foreach (var id in ids)
        {
            if (skipSpecialTokens && _specialIds.Contains(id)) continue;
            if (id >= 0 && id < _idToToken.Length && _idToToken[id] is { } t) tokens.Add(t);
        }
        var text = _decoder is null ? string.Join(" ", tokens) : string.Concat(_decoder.DecodeChain(tokens));
        return _cleanUp ? CleanUp.Apply(text) : text;
    }

    /// <summary>The token string of an id (in the model's own alphabet, e.g. <c>Ġ</c> for a space), or null.</summary>
    public string? IdToToken(int id) => id >= 0 && id < _idToToken.Length ? _idToToken[id] : null;
}
