using System.Text;

namespace Microsoft.ML.Lora.Tokenization;

/// <summary>
/// BPE over characters with merges by rank and byte fallback, as HF runs SentencePiece-converted tokenizers
/// (Mistral, Llama-2). Microsoft.ML.Tokenizers' <c>BpeTokenizer</c> has no byte fallback, and its
/// <c>SentencePieceTokenizer</c> only reads a SentencePiece <c>.model</c> protobuf, not <c>tokenizer.json</c>.
/// </summary>
internal sealed class SentencePieceBpe : IBpeModel
{
    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<(string, string), int> _ranks;
    private readonly int[]? _byteIds;
    private readonly int? _unkId;
    private readonly HfPreTokenizer? _preTokenizer;
    private readonly bool _ignoreMerges, _fuseUnk;

    public SentencePieceBpe(Dictionary<string, int> vocab, IReadOnlyList<(string, string)> merges, BpeModelFlags flags,
        string? unkToken, HfPreTokenizer? preTokenizer)
    {
        var byteFallback = flags.ByteFallback;
        _ignoreMerges = flags.IgnoreMerges;
        _fuseUnk = flags.FuseUnk;
        _vocab = vocab;
        _ranks = new Dictionary<(string, string), int>(merges.Count);
        for (var i = 0; i < merges.Count; i++) _ranks.TryAdd(merges[i], i);
        if (byteFallback)
        {
            _byteIds = new int[256];
            for (var b = 0; b < 256; b++)
                _byteIds[b] = vocab.TryGetValue($"<0x{b:X2}>", out var id) ? id : -1;
        }
        _unkId = unkToken != null && vocab.TryGetValue(unkToken, out var u) ? u : null;
        _preTokenizer = preTokenizer;
    }

    public void Encode(string text, List<int> ids, bool atStart)
    {
        if (text.Length == 0) return;
        if (_preTokenizer is null) { EncodeWord(text, ids); return; }
        text = _preTokenizer.Prepare(text, atStart);
        foreach (var (o, l) in _preTokenizer.Pieces(text)) EncodeWord(text.Substring(o, l), ids);
    }

    /// <summary>Offsets are not tracked through the SentencePiece normalizers (Prepend/Replace).</summary>
    public bool TryEncodeWithOffsets(string text, int baseOffset, List<TokenSpan> output, bool atStart) => false;

    private sealed class Symbol
    {
        public required string Text;
        public int Prev = -1, Next = -1;
        public bool Dead, Fixed; // Fixed: a byte-fallback or unknown piece, never merged
        public bool IsUnk; // the unknown token (fuse_unk joins a run of them)
        public int Id = -1;
    }

    private void EncodeWord(string word, List<int> ids)
    {
        if (_ignoreMerges && _vocab.TryGetValue(word, out var whole)) { ids.Add(whole); return; }
        var symbols = new List<Symbol>(word.Length);
        for (var i = 0; i < word.Length; i++)
        {
            var len = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            var ch = word.Substring(i, len);
            i += len - 1;
            if (_vocab.ContainsKey(ch)) symbols.Add(new Symbol { Text = ch });
            else if (_byteIds != null)
                foreach (var b in Encoding.UTF8.GetBytes(ch)) symbols.Add(new Symbol { Text = ch, Fixed = true, Id = _byteIds[b] });
            else if (_fuseUnk && symbols.Count > 0 && symbols[^1] is { Fixed: true, IsUnk: true } previous) previous.Text += ch;
            else symbols.Add(new Symbol { Text = ch, Fixed = true, IsUnk = true, Id = _unkId ?? throw new InvalidOperationException($"no token for '{ch}' and no unk_token") });
        }
        for (var i = 0; i < symbols.Count; i++) { symbols[i].Prev = i - 1; symbols[i].Next = i + 1 < symbols.Count ? i + 1 : -1; }

        // Min-heap of candidate merges (rank, left position); stale entries are skipped when popped.
        var heap = new PriorityQueue<(int Left, string L, string R), (int Rank, int Left)>();
        void Push(int left)
        {
            var right = symbols[left].Next;
            if (right < 0 || symbols[left].Fixed || symbols[right].Fixed) return;
            if (_ranks.TryGetValue((symbols[left].Text, symbols[right].Text), out var rank))
                heap.Enqueue((left, symbols[left].Text, symbols[right].Text), (rank, left));
        }
        for (var i = 0; i + 1 < symbols.Count; i++) Push(i);
        while (heap.TryDequeue(out var c, out _))
        {
            var l = symbols[c.Left];
            if (l.Dead || l.Next < 0 || l.Text != c.L) continue;
            var r = symbols[l.Next];
            if (r.Text != c.R) continue;
            l.Text = c.L + c.R;
            r.Dead = true;
            l.Next = r.Next;
            if (r.Next >= 0) symbols[r.Next].Prev = c.Left;
            if (l.Prev >= 0) Push(l.Prev);
            Push(c.Left);
        }
        for (var i = 0; i >= 0 && i < symbols.Count; i = symbols[i].Next)
        {
            var s = symbols[i];
            if (s.Fixed) ids.Add(s.Id);
            else ids.Add(_vocab.TryGetValue(s.Text, out var id) ? id : _unkId ?? -1);
        }
    }
}
