using System.Text;

namespace Microsoft.ML.Lora.Tokenization;

/// <summary>A Hugging Face normalizer: applied to each text segment left between added tokens.</summary>
internal abstract class TextNormalizer
{
    public abstract string Normalize(string text);
}

internal sealed class UnicodeNormalizer(NormalizationForm form) : TextNormalizer
{
    // .NET refuses U+FFFE ("invalid Unicode code points"); Rust's normalizers keep it, as every form does (a
    // noncharacter: no decomposition, combining class 0, so nothing composes across it): normalize around it.
    public override string Normalize(string text) =>
        text.Contains('\uFFFE') ? string.Join('\uFFFE', text.Split('\uFFFE').Select(Normalize))
        : text.IsNormalized(form) ? text : text.Normalize(form);
}

/// <summary>
/// Text as Hugging Face tokenizers receive it: a Rust string holds Unicode scalar values only, so a lone UTF-16
/// surrogate (which a .NET string may hold) becomes U+FFFD, as UTF-8 encoding replaces it. One char for one, so
/// offsets into the text stay valid.
/// </summary>
internal static class ScalarText
{
    public static string ReplaceLoneSurrogates(string text)
    {
        if (text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') < 0) return text;
        var chars = text.ToCharArray();
        for (int i = 0; i < chars.Length; i++)
        {
            if (char.IsHighSurrogate(chars[i]) && i + 1 < chars.Length && char.IsLowSurrogate(chars[i + 1])) i++;
            else if (char.IsSurrogate(chars[i])) chars[i] = '\uFFFD';
        }
        return new string(chars);
    }
}

/// <summary>HF <c>Prepend</c>: adds the prefix to a non-empty text.</summary>
internal sealed class PrependNormalizer(string prefix) : TextNormalizer
{
    public override string Normalize(string text) => text.Length == 0 ? text : prefix + text;
}

/// <summary>HF <c>Replace</c> with a plain string pattern (regex patterns are rejected by the loader).</summary>
internal sealed class ReplaceNormalizer(string pattern, string content) : TextNormalizer
{
    public override string Normalize(string text) => text.Replace(pattern, content, StringComparison.Ordinal);
}

internal sealed class SequenceNormalizer(IReadOnlyList<TextNormalizer> steps) : TextNormalizer
{
    public override string Normalize(string text)
    {
        foreach (var s in steps) text = s.Normalize(text);
        return text;
    }
}
