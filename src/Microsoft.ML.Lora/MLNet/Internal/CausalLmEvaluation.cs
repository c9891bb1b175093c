using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// <c>mlContext.Lora().Evaluate</c>: reads the prompt, completion, reference and generated columns of every row in one
/// pass, then scores the completions with the model (<see cref="ITextGenerator.CompletionLoss"/>) and compares the
/// generated texts with the references (<see cref="TagSets"/>). Formulas: <see cref="LoraCausalLmMetrics"/>.
/// </summary>
internal static class CausalLmEvaluation
{
    public static LoraCausalLmMetrics Evaluate(IDataView data, ITransformer model, string? referenceColumnName, string tagSeparator)
    {
        ArgumentNullException.ThrowIfNull(data);
        ArgumentNullException.ThrowIfNull(model);
        if (referenceColumnName is not null) ArgumentException.ThrowIfNullOrEmpty(tagSeparator);
        var (prepared, lora) = Prepare(model, data);
        var o = lora.Options;
        // Data already scored by the model keeps its generated column; otherwise it is generated here (only when needed).
        var scored = referenceColumnName is not null && prepared.Schema.GetColumnOrNull(o.OutputColumnName) is null ? lora.Transform(prepared) : prepared;
        int prompt = SchemaChecks.Column(scored.Schema, o.PromptColumn, o.PromptIsTokens, "prompt", nameof(data));
        int completion = SchemaChecks.Column(scored.Schema, o.CompletionColumn, o.CompletionIsTokens, "completion", nameof(data));
        int? reference = referenceColumnName is null ? null : SchemaChecks.TextColumn(scored.Schema, referenceColumnName, "reference", nameof(referenceColumnName));
        int? generated = referenceColumnName is null ? null : SchemaChecks.TextColumn(scored.Schema, o.OutputColumnName, "generated", nameof(data));

        var examples = new List<PromptCompletion>();
        var texts = new List<(string Generated, string Reference)>();
        var columns = new[] { prompt, completion }.Concat(reference is int r ? [r, generated!.Value] : []).Select(i => scored.Schema[i]);
        using (var cursor = scored.GetRowCursor(columns))
        {
            var getPrompt = PromptReader.Create(cursor, prompt, o.PromptIsTokens);
            var getCompletion = PromptReader.Create(cursor, completion, o.CompletionIsTokens);
            var getReference = reference is int ri ? PromptReader.Create(cursor, ri, tokens: false) : null;
            var getGenerated = generated is int gi ? PromptReader.Create(cursor, gi, tokens: false) : null;
            while (cursor.MoveNext())
            {
                var p = getPrompt();
                var c = getCompletion();
                examples.Add(new PromptCompletion(p.Text, c.Text, p.Ids, c.Ids));
                if (getReference is not null) texts.Add((getGenerated!().Text, getReference().Text));
            }
        }
        if (examples.Count == 0) throw new InvalidOperationException("The evaluation data has no rows.");

        double sum; long tokens;
        try { (sum, tokens) = lora.Generator.CompletionLoss(examples); }
        catch (PromptException e) { throw e.At(0, e.InCompletion ? o.CompletionColumn : o.PromptColumn); }
        return new LoraCausalLmMetrics(examples.Count, tokens, sum, referenceColumnName is null ? null : TagSets.Count(texts, tagSeparator));
    }

    /// <summary>
    /// The <see cref="LoraCausalLmTransformer"/> of <paramref name="model"/> (itself, or the last one of a chain, nested
    /// chains included) and <paramref name="data"/> passed through the steps before it (e.g. the prompt's ConcatenateText
    /// and the Tokenize steps), so raw rows have the columns it reads.
    /// </summary>
    internal static (IDataView Data, LoraCausalLmTransformer Model) Prepare(ITransformer model, IDataView data)
    {
        var steps = Flatten(model).ToList();
        int last = steps.FindLastIndex(t => t is LoraCausalLmTransformer);
        if (last < 0)
            throw new ArgumentException($"The model ({model.GetType().Name}) has no LoraCausalLmTransformer: pass the model Fit or Model.Load returned.", nameof(model));
        foreach (var step in steps.Take(last)) data = step.Transform(data);
        return (data, (LoraCausalLmTransformer)steps[last]);
    }

    private static IEnumerable<ITransformer> Flatten(ITransformer model) =>
        model is IEnumerable<ITransformer> chain ? chain.SelectMany(Flatten) : [model];
}

/// <summary>Exact match and tag-set counts of generated texts against references (definitions: <see cref="LoraCausalLmMetrics"/>).</summary>
internal static class TagSets
{
    public static LoraCausalLmMetrics.GenerationCounts Count(IEnumerable<(string Generated, string Reference)> rows, string separator)
    {
        int exact = 0; long tp = 0, generated = 0, reference = 0;
        foreach (var (g, t) in rows)
        {
            if (string.Equals(g.Trim(), t.Trim(), StringComparison.Ordinal)) exact++;
            var gs = Split(g, separator);
            var ts = Split(t, separator);
            generated += gs.Count;
            reference += ts.Count;
            tp += gs.Count(ts.Contains);
        }
        return new LoraCausalLmMetrics.GenerationCounts(exact, tp, generated, reference);
    }

    /// <summary>The set of tags of <paramref name="text"/>: pieces between separators, trimmed, non-empty, case-insensitive.</summary>
    public static HashSet<string> Split(string text, string separator) =>
        text.Split(separator, StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .ToHashSet(StringComparer.InvariantCultureIgnoreCase);
}
