using System.Text;

namespace Microsoft.ML.Lora.Tokenization;

/// <summary>A Hugging Face normalizer: applied to each text segment left between added tokens.</summary>
internal abstract class TextNormalizer
{
    public abstract string Normalize(string text);
}

internal sealed class UnicodeNormalizer(NormalizationForm form) : TextNormalizer
{
    public override string Normalize(string text) => text.IsNormalized(form) ? text : text.Normalize(form);
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
