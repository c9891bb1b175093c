using System.Text.RegularExpressions;

namespace Microsoft.ML.Lora.Tokenization;

/// <summary>An entry of <c>added_tokens</c>: matched in raw text before the model runs.</summary>
internal sealed record AddedToken(int Id, string Content, bool Special);

/// <summary>Splits text on added tokens, longest first, as HF does before normalizing each remaining segment.</summary>
internal sealed class AddedTokenSplitter
{
    private readonly Regex? _regex;
    private readonly Dictionary<string, int> _ids;

    public AddedTokenSplitter(IEnumerable<AddedToken> tokens)
    {
        var list = tokens.Where(t => t.Content.Length > 0).ToList();
        _ids = list.GroupBy(t => t.Content).ToDictionary(g => g.Key, g => g.First().Id);
        if (_ids.Count > 0)
            _regex = new Regex(string.Join("|", _ids.Keys.OrderByDescending(k => k.Length).Select(Regex.Escape)),
                RegexOptions.Compiled | RegexOptions.CultureInvariant);
    }

    /// <summary>Yields (segment text, -1) for plain text and (null, id) for an added token.</summary>
    public IEnumerable<(string? Text, int Id)> Split(string text)
    {
        if (_regex is null) { yield return (text, -1); yield break; }
        var pos = 0;
        foreach (Match m in _regex.Matches(text))
        {
            if (m.Index > pos) yield return (text[pos..m.Index], -1);
            yield return (null, _ids[m.Value]);
            pos = m.Index + m.Length;
        }
        if (pos < text.Length) yield return (text[pos..], -1);
    }
}
