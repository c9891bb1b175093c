using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace Microsoft.ML.Lora.Tokenization;

/// <summary>How HF's <c>Split</c> pre-tokenizer treats the pieces its pattern matches.</summary>
internal enum SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

/// <summary>One step of a HF pre-tokenizer: refines a piece (offset, length) of the text into smaller pieces.</summary>
internal abstract class PreTokenizeStep
{
    /// <summary>Text rewrite done once per segment before splitting (ByteLevel's prefix space, Metaspace's ▁).</summary>
    public virtual string Prepare(string text, bool atStart) => text;

    public abstract void Split(string text, int offset, int length, List<(int Offset, int Length)> output);
}

/// <summary>
/// HF <c>Split</c>. Microsoft.ML.Tokenizers' <see cref="RegexPreTokenizer"/> returns only the regex matches and drops the
/// text between them, which loses characters for patterns such as BLOOM's; HF keeps those gaps as pieces.
/// </summary>
/// <remarks><paramref name="source"/>: the tokenizer.json the pattern came from, named when a match times out.</remarks>
internal sealed class SplitStep(Regex regex, SplitBehavior behavior, bool invert, string? source = null) : PreTokenizeStep
{
    /// <summary>Time one match of a pattern read from a file may take; a linear pattern needs microseconds.</summary>
    internal static readonly TimeSpan MatchTimeout = TimeSpan.FromSeconds(2);

    public override void Split(string text, int offset, int length, List<(int Offset, int Length)> output)
    {
        var parts = new List<(int Start, int End, bool Match)>();
        var pos = 0;
        try
        {
            foreach (var m in regex.EnumerateMatches(text.AsSpan(offset, length)))
            {
                if (m.Length == 0) continue;
                if (m.Index > pos) parts.Add((pos, m.Index, invert));
                parts.Add((m.Index, m.Index + m.Length, !invert));
                pos = m.Index + m.Length;
            }
        }
        catch (RegexMatchTimeoutException e)
        {
            throw new InvalidDataException(
                $"'{source ?? "tokenizer"}': the Split pre-tokenizer's pattern \"{regex}\" took more than {MatchTimeout.TotalSeconds} s on a text of {length} characters (catastrophic backtracking); the tokenizer file is broken or hostile.", e);
        }
        if (pos < length) parts.Add((pos, length, invert));

        var pending = -1; // start of a piece still open (MergedWithNext / Contiguous)
        var last = -1;    // index in output of the last piece (MergedWithPrevious)
        foreach (var (s, e, match) in parts)
        {
            switch (behavior)
            {
                case SplitBehavior.Isolated:
                    output.Add((offset + s, e - s));
                    break;
                case SplitBehavior.Removed:
                    if (!match) output.Add((offset + s, e - s));
                    break;
                case SplitBehavior.MergedWithPrevious:
                    if (match && last >= 0 && output[last].Offset + output[last].Length == offset + s)
                        output[last] = (output[last].Offset, output[last].Length + e - s);
                    else { output.Add((offset + s, e - s)); last = output.Count - 1; }
                    break;
                case SplitBehavior.MergedWithNext:
                    if (match) { if (pending < 0) pending = s; }
                    else { var st = pending >= 0 ? pending : s; output.Add((offset + st, e - st)); pending = -1; }
                    break;
                case SplitBehavior.Contiguous:
                    if (match && last >= 0 && pending >= 0)
                        output[last] = (output[last].Offset, output[last].Length + e - s);
                    else { output.Add((offset + s, e - s)); last = output.Count - 1; }
                    pending = match ? 1 : -1;
                    break;
            }
        }
        if (behavior == SplitBehavior.MergedWithNext && pending >= 0) output.Add((offset + pending, length - pending));
    }

    /// <summary>
    /// Oniguruma (used by HF) accepts a character class nested in another, as in BLOOM's <c>[^(\s|[.,!?…])]</c>, meaning
    /// their union; .NET reads <c>[</c> there as a literal and the pattern changes meaning or fails. Flattens such
    /// non-negated inner classes into the outer one.
    /// </summary>
    public static string FlattenNestedClasses(string pattern)
    {
        var sb = new StringBuilder(pattern.Length);
        var depth = 0;
        for (var i = 0; i < pattern.Length; i++)
        {
            var c = pattern[i];
            if (c == '\\' && i + 1 < pattern.Length) { sb.Append(c).Append(pattern[++i]); continue; }
            if (c == '[')
            {
                if (depth > 0 && i + 1 < pattern.Length && pattern[i + 1] == '^')
                    throw new NotSupportedException($"negated character class nested in another: '{pattern}'");
                depth++;
                if (depth > 1) continue;
                sb.Append(c);
                if (i + 1 < pattern.Length && pattern[i + 1] == '^') sb.Append(pattern[++i]);
                // A ']' right after '[' or '[^' is a literal.
                if (i + 1 < pattern.Length && pattern[i + 1] == ']') sb.Append('\\').Append(pattern[++i]);
                continue;
            }
            if (c == ']' && depth > 0)
            {
                depth--;
                if (depth > 0) continue;
            }
            sb.Append(c);
        }
        return sb.ToString();
    }
}

/// <summary>HF <c>ByteLevel</c> pre-tokenizer; the byte mapping itself is done by the BPE model.</summary>
internal sealed class ByteLevelStep(bool addPrefixSpace, bool useRegex) : PreTokenizeStep
{
    private static readonly Regex Gpt2 = new(ByteLevel.Gpt2Pattern, RegexOptions.Compiled);
    private readonly SplitStep? _split = useRegex ? new SplitStep(Gpt2, SplitBehavior.Isolated, false) : null;

    public override string Prepare(string text, bool atStart) => addPrefixSpace && text.Length > 0 && text[0] != ' ' ? " " + text : text;

    public override void Split(string text, int offset, int length, List<(int Offset, int Length)> output)
    {
        if (_split is null) output.Add((offset, length));
        else _split.Split(text, offset, length, output);
    }
}

/// <summary>HF <c>Metaspace</c>: spaces become ▁, a ▁ is prepended per <c>prepend_scheme</c>, and ▁ starts each word.</summary>
internal sealed class MetaspaceStep(char replacement, MetaspaceStep.Scheme prepend, bool split) : PreTokenizeStep
{
    public enum Scheme { Always, First, Never }

    public override string Prepare(string text, bool atStart)
    {
        text = text.Replace(' ', replacement);
        return (prepend == Scheme.Always || prepend == Scheme.First && atStart) && text.Length > 0 && text[0] != replacement ? replacement + text : text;
    }

    public override void Split(string text, int offset, int length, List<(int Offset, int Length)> output)
    {
        if (!split) { output.Add((offset, length)); return; }
        var start = offset;
        for (var i = offset + 1; i < offset + length; i++)
        {
            if (text[i] != replacement) continue;
            output.Add((start, i - start));
            start = i;
        }
        if (length > 0) output.Add((start, offset + length - start));
    }
}

/// <summary>
/// Chains HF pre-tokenizer steps. Derives from Microsoft.ML.Tokenizers' <see cref="PreTokenizer"/> so that its
/// <see cref="BpeTokenizer"/> runs it; its own pre-tokenizers cannot express HF's Split behaviors or Metaspace.
/// </summary>
internal sealed class HfPreTokenizer(IReadOnlyList<PreTokenizeStep> steps) : PreTokenizer
{
    public IReadOnlyList<PreTokenizeStep> Steps => steps;

    public string Prepare(string text, bool atStart = true)
    {
        foreach (var s in steps) text = s.Prepare(text, atStart);
        return text;
    }

    public List<(int Offset, int Length)> Pieces(string text)
    {
        var current = new List<(int Offset, int Length)> { (0, text.Length) };
        var next = new List<(int Offset, int Length)>();
        foreach (var step in steps)
        {
            next.Clear();
            foreach (var (o, l) in current) step.Split(text, o, l, next);
            (current, next) = (next, current);
        }
        current.RemoveAll(p => p.Length == 0);
        return current;
    }

    public override IEnumerable<(int Offset, int Length)> PreTokenize(string text) =>
        string.IsNullOrEmpty(text) ? [] : Pieces(text);

    public override IEnumerable<(int Offset, int Length)> PreTokenize(ReadOnlySpan<char> text) =>
        text.IsEmpty ? [] : Pieces(text.ToString());
}
