using System.Text;
using Microsoft.ML.Tokenizers;

namespace Microsoft.ML.Lora.Tokenization;

/// <summary>The model step of a tokenizer: text of one segment (already normalized) to ids.</summary>
internal interface IBpeModel
{
    /// <param name="text">One normalized segment.</param>
    /// <param name="ids">Receives the ids.</param>
    /// <param name="atStart">Whether the segment starts the input (Metaspace's <c>prepend_scheme: first</c>).</param>
    void Encode(string text, List<int> ids, bool atStart);

    /// <summary>Adds (id, start, length) with char offsets into <paramref name="text"/>; false where unsupported.</summary>
    bool TryEncodeWithOffsets(string text, int baseOffset, List<TokenSpan> output, bool atStart);
}

/// <summary>
/// Byte-level BPE (GPT-2, LLaMA-3, Qwen, BLOOM) on Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/> with
/// <c>ByteLevel = true</c>, which matches HF on these vocabularies; only the pre-tokenizer is ours.
/// </summary>
internal sealed class ByteLevelBpe : IBpeModel
{
    private readonly BpeTokenizer _bpe;
    private readonly HfPreTokenizer _preTokenizer;
    private readonly IReadOnlyDictionary<string, int>? _wholeWords;

    /// <param name="vocab">Token (in GPT-2's byte alphabet) to id.</param>
    /// <param name="merges">"a b" merge lines by rank.</param>
    /// <param name="preTokenizer">The pre-tokenizer steps of tokenizer.json.</param>
    /// <param name="ignoreMerges">tokenizer.json's <c>ignore_merges</c>: a word that is in the vocabulary is one token.</param>
    public ByteLevelBpe(Dictionary<string, int> vocab, IEnumerable<string> merges, HfPreTokenizer preTokenizer, bool ignoreMerges = false)
    {
        _preTokenizer = preTokenizer;
        _bpe = BpeTokenizer.Create(new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            PreTokenizer = preTokenizer,
        });
        _wholeWords = ignoreMerges ? vocab : null;
    }

    public BpeTokenizer Inner => _bpe;

    public void Encode(string text, List<int> ids, bool atStart)
    {
        if (text.Length == 0) return;
        var prepared = _preTokenizer.Prepare(text, atStart);
        if (_wholeWords is null)
        {
            ids.AddRange(_bpe.EncodeToIds(prepared, considerPreTokenization: true, considerNormalization: false));
            return;
        }
        // HF's BPE with ignore_merges looks each pre-tokenized word up before merging it.
        foreach (var (o, l) in _preTokenizer.Pieces(prepared))
        {
            var word = prepared.Substring(o, l);
            if (_wholeWords.TryGetValue(ToByteAlphabet(word), out var id)) ids.Add(id);
            else ids.AddRange(_bpe.EncodeToIds(word, considerPreTokenization: false, considerNormalization: false));
        }
    }

    public bool TryEncodeWithOffsets(string text, int baseOffset, List<TokenSpan> output, bool atStart)
    {
        if (text.Length == 0) return true;
        var prepared = _preTokenizer.Prepare(text, atStart);
        var shift = prepared.Length - text.Length; // a prefix space added by ByteLevel maps to offset 0
        void Add(int id, int start, int length)
        {
            var s = Math.Max(0, start - shift);
            var e = Math.Max(0, start + length - shift);
            output.Add(new TokenSpan(id, baseOffset + s, e - s));
        }
        if (_wholeWords is null)
        {
            foreach (var t in _bpe.EncodeToTokens(prepared, out _, considerPreTokenization: true, considerNormalization: false))
            {
                var (start, length) = t.Offset.GetOffsetAndLength(prepared.Length);
                Add(t.Id, start, length);
            }
            return true;
        }
        foreach (var (o, l) in _preTokenizer.Pieces(prepared))
        {
            var word = prepared.Substring(o, l);
            if (_wholeWords.TryGetValue(ToByteAlphabet(word), out var id)) { Add(id, o, l); continue; }
            foreach (var t in _bpe.EncodeToTokens(word, out _, considerPreTokenization: false, considerNormalization: false))
            {
                var (start, length) = t.Offset.GetOffsetAndLength(word.Length);
                Add(t.Id, o + start, length);
            }
        }
        return true;
    }

    /// <summary>A word's UTF-8 bytes written in GPT-2's byte alphabet, the spelling of the vocabulary.</summary>
    private static string ToByteAlphabet(string word)
    {
        var bytes = Encoding.UTF8.GetBytes(word);
        var chars = new char[bytes.Length];
        for (var i = 0; i < bytes.Length; i++) chars[i] = ByteLevel.ByteToChar[bytes[i]];
        return new string(chars);
    }
}
