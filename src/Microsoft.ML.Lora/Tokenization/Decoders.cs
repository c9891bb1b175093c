using System.Globalization;
using System.Text;

namespace Microsoft.ML.Lora.Tokenization;

/// <summary>
/// A HF decoder: maps a list of token strings to a list of strings (<c>decode_chain</c>), joined at the end.
/// Microsoft.ML.Tokenizers has no configurable decoder chain, so these follow the HF Rust implementations.
/// </summary>
internal abstract class TokenDecoder
{
    public abstract List<string> DecodeChain(List<string> tokens);
}

internal sealed class ByteLevelDecoder : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var bytes = new List<byte>();
        foreach (var t in tokens) ByteLevel.AppendBytes(t, bytes);
        return [Encoding.UTF8.GetString(bytes.ToArray())];
    }
}

internal sealed class ReplaceDecoder(string pattern, string content) : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens) =>
        tokens.Select(t => t.Replace(pattern, content, StringComparison.Ordinal)).ToList();
}

/// <summary>Turns runs of <c>&lt;0xNN&gt;</c> tokens into text; an invalid UTF-8 run gives one U+FFFD per byte.</summary>
internal sealed class ByteFallbackDecoder : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        var output = new List<string>(tokens.Count);
        var bytes = new List<byte>();
        var strict = new UTF8Encoding(false, true);
        void Flush()
        {
            if (bytes.Count == 0) return;
            try { output.Add(strict.GetString(bytes.ToArray())); }
            catch (DecoderFallbackException) { output.AddRange(Enumerable.Repeat("\uFFFD", bytes.Count)); }
            bytes.Clear();
        }
        foreach (var t in tokens)
        {
            if (t.Length == 6 && t.StartsWith("<0x", StringComparison.Ordinal) && t[5] == '>'
                && byte.TryParse(t.AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out var b))
            {
                bytes.Add(b);
                continue;
            }
            Flush();
            output.Add(t);
        }
        Flush();
        return output;
    }
}

internal sealed class FuseDecoder : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens) => [string.Concat(tokens)];
}

/// <summary>Removes up to <c>start</c> leading and <c>stop</c> trailing <c>content</c> characters of each token.</summary>
internal sealed class StripDecoder(char content, int start, int stop) : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens) => tokens.Select(t =>
    {
        var a = 0;
        while (a < start && a < t.Length && t[a] == content) a++;
        var b = 0;
        while (b < stop && t.Length - b > a && t[t.Length - 1 - b] == content) b++;
        return t.Substring(a, t.Length - a - b);
    }).ToList();
}

internal sealed class MetaspaceDecoder(char replacement, bool prepend) : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens) => tokens.Select((t, i) =>
    {
        var s = t.Replace(replacement, ' ');
        return i == 0 && prepend && s.StartsWith(' ') ? s[1..] : s;
    }).ToList();
}

internal sealed class SequenceDecoder(IReadOnlyList<TokenDecoder> steps) : TokenDecoder
{
    public override List<string> DecodeChain(List<string> tokens)
    {
        foreach (var s in steps) tokens = s.DecodeChain(tokens);
        return tokens;
    }
}

/// <summary>transformers' <c>clean_up_tokenization</c>, applied after decoding when the config asks for it.</summary>
internal static class CleanUp
{
    public static string Apply(string s) => s
        .Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",").Replace(" ' ", "'")
        .Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");
}
