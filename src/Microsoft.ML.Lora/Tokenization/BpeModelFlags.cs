using System.Globalization;
using System.Text.Json;

namespace Microsoft.ML.Lora.Tokenization;

/// <summary>
/// The flags of a tokenizer.json BPE <c>model</c> that change how a word is encoded (Hugging Face tokenizers' BPE).
/// Those this library does not implement are refused when they are set to anything but their neutral value.
/// </summary>
/// <param name="IgnoreMerges"><c>ignore_merges</c>: a pre-tokenized word that is itself in the vocabulary is one token, whatever the merges say (Llama-3).</param>
/// <param name="FuseUnk"><c>fuse_unk</c>: consecutive unknown characters become one unknown token.</param>
/// <param name="ByteFallback"><c>byte_fallback</c>: an unknown character becomes its UTF-8 bytes as <c>&lt;0xXX&gt;</c> tokens.</param>
internal sealed record BpeModelFlags(bool IgnoreMerges, bool FuseUnk, bool ByteFallback)
{
    /// <summary>Reads the flags of <paramref name="model"/> (the <c>model</c> object of the file <paramref name="path"/>).</summary>
    public static BpeModelFlags Read(JsonElement model, string path)
    {
        bool Flag(string name) => model.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.True;
        // Word-piece style affixes (CLIP's "</w>", BERT-like "##") change every merge; "" or null is the neutral value.
        foreach (var name in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (model.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String && v.GetString()!.Length > 0)
                throw new NotSupportedException($"Unsupported model flag '{name}: \"{v.GetString()}\"' in '{path}': only BPE without subword affixes is implemented.");
        // BPE dropout drops merges at random while encoding; null and 0 mean no dropout.
        if (model.TryGetProperty("dropout", out var d) && d.ValueKind == JsonValueKind.Number && d.GetDouble() != 0)
            throw new NotSupportedException($"Unsupported model flag 'dropout: {d.GetDouble().ToString(CultureInfo.InvariantCulture)}' in '{path}': " +
                "BPE dropout makes encoding random; set it to null for inference and fine-tuning.");
        return new BpeModelFlags(Flag("ignore_merges"), Flag("fuse_unk"), Flag("byte_fallback"));
    }
}
