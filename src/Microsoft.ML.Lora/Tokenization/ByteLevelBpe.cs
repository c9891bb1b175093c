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

    public ByteLevelBpe(Dictionary<string, int> vocab, IEnumerable<string> merges, HfPreTokenizer preTokenizer)
    {
        _preTokenizer = preTokenizer;
        _bpe = BpeTokenizer.Create(new BpeOptions(vocab)
        {
            Merges = merges,
            ByteLevel = true,
            PreTokenizer = preTokenizer,
        });
    }

    public BpeTokenizer Inner => _bpe;

    public void Encode(string text, List<int> ids, bool atStart)
    {
        if (text.Length == 0) return;
        ids.AddRange(_bpe.EncodeToIds(_preTokenizer.Prepare(text, atStart), considerPreTokenization: true, considerNormalization: false));
    }

    public bool TryEncodeWithOffsets(string text, int baseOffset, List<TokenSpan> output, bool atStart)
    {
        if (text.Length == 0) return true;
        var prepared = _preTokenizer.Prepare(text, atStart);
        var shift = prepared.Length - text.Length; // a prefix space added by ByteLevel maps to offset 0
        foreach (var t in _bpe.EncodeToTokens(prepared, out _, considerPreTokenization: true, considerNormalization: false))
        {
            var (start, length) = t.Offset.GetOffsetAndLength(prepared.Length);
            var s = Math.Max(0, start - shift);
            var e = Math.Max(0, start + length - shift);
            output.Add(new TokenSpan(t.Id, baseOffset + s, e - s));
        }
        return true;
    }
}
