using System.Text;

namespace Microsoft.ML.Lora.Tokenization;

/// <summary>GPT-2's reversible byte ↔ printable-character table (<c>bytes_to_unicode</c>).</summary>
internal static class ByteLevel
{
    public static readonly char[] ByteToChar = Build();
    public static readonly Dictionary<char, byte> CharToByte =
        Enumerable.Range(0, 256).ToDictionary(b => ByteToChar[b], b => (byte)b);

    /// <summary>GPT-2's own split regex, used by ByteLevel with <c>use_regex: true</c>.</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private static char[] Build()
    {
        var map = new char[256];
        var n = 0;
        for (var b = 0; b < 256; b++)
        {
            var printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? (char)b : (char)(256 + n++);
        }
        return map;
    }

    /// <summary>Token text back to bytes; like HF, a token with a character outside the table keeps its raw UTF-8.</summary>
    public static void AppendBytes(string token, List<byte> bytes)
    {
        var start = bytes.Count;
        foreach (var c in token)
        {
            if (CharToByte.TryGetValue(c, out var b)) bytes.Add(b);
            else
            {
                bytes.RemoveRange(start, bytes.Count - start);
                bytes.AddRange(Encoding.UTF8.GetBytes(token));
                return;
            }
        }
    }
}
