namespace Microsoft.ML.Lora;

/// <summary>
/// What <c>mlContext.Lora().Evaluate</c> measures of a fine-tuned causal LM on a data set: how well it predicts the
/// reference completions (token loss, perplexity) and, when a reference text column is given, how well the completions
/// it generates match them (exact match, tag-set precision, recall and F1).
/// </summary>
/// <remarks>
/// <para>
/// Loss: for row <c>r</c> with completion tokens <c>c(r,1..n_r)</c> (the completion's tokens plus EOS, exactly the
/// labels of training: prompt positions masked, the example cut to <c>MaxSequenceLength</c> and the model's context),
/// <c>MeanTokenLoss = Σ_r Σ_i −log p(c(r,i) | prompt_r, c(r,&lt;i)) / Σ_r n_r</c>, a micro-average over every completion
/// token of every row (a long completion weighs more than a short one, as in the training and validation losses), in
/// nats; <c>Perplexity = exp(MeanTokenLoss)</c>. No dropout.
/// </para>
/// <para>
/// Generation: <c>g_r</c> is the generated text, <c>t_r</c> the reference. <c>ExactMatch</c> is the fraction of rows
/// whose <c>g_r.Trim() == t_r.Trim()</c> (ordinal, case-sensitive; Trim removes leading and trailing white space).
/// Tags: a text is split on the separator (default ","), each piece trimmed, empty pieces dropped, compared
/// case-insensitively (invariant culture), as a set (a repeated tag counts once): <c>G_r</c>, <c>T_r</c>.
/// Micro-averaged over rows: <c>TP = Σ_r |G_r ∩ T_r|</c>, <c>Precision = TP / Σ_r |G_r|</c>,
/// <c>Recall = TP / Σ_r |T_r|</c>, <c>F1 = 2·Precision·Recall / (Precision + Recall)</c>. Empty cases: when no tag was
/// generated in any row, Precision is 1 if there are no reference tags either, else 0; when there are no reference tags
/// in any row, Recall is 1 if no tag was generated either, else 0; F1 is 0 when Precision + Recall is 0.
/// </para>
/// </remarks>
public sealed class LoraCausalLmMetrics
{
    internal LoraCausalLmMetrics(int rowCount, long completionTokenCount, double lossSum, GenerationCounts? generation)
    {
        RowCount = rowCount;
        CompletionTokenCount = completionTokenCount;
        MeanTokenLoss = completionTokenCount == 0 ? double.NaN : lossSum / completionTokenCount;
        Perplexity = Math.Exp(MeanTokenLoss);
        if (generation is { } g)
        {
            ExactMatch = rowCount == 0 ? double.NaN : (double)g.ExactMatches / rowCount;
            TagPrecision = g.GeneratedTags > 0 ? (double)g.TruePositives / g.GeneratedTags : g.ReferenceTags == 0 ? 1 : 0;
            TagRecall = g.ReferenceTags > 0 ? (double)g.TruePositives / g.ReferenceTags : g.GeneratedTags == 0 ? 1 : 0;
            double p = TagPrecision.Value, r = TagRecall.Value;
            TagF1 = p + r > 0 ? 2 * p * r / (p + r) : 0;
        }
    }

    /// <summary>Rows evaluated.</summary>
    public int RowCount { get; }

    /// <summary>Completion tokens scored over all rows (each row's completion tokens plus EOS, after cutting to the length).</summary>
    public long CompletionTokenCount { get; }

    /// <summary>Mean cross-entropy (nats) per completion token over all rows: Σ token losses / <see cref="CompletionTokenCount"/>.</summary>
    public double MeanTokenLoss { get; }

    /// <summary>exp(<see cref="MeanTokenLoss"/>).</summary>
    public double Perplexity { get; }

    /// <summary>Fraction of rows whose generated text equals the reference after trimming white space; null without a reference column.</summary>
    public double? ExactMatch { get; }

    /// <summary>Generated tags that are reference tags, over all generated tags (micro-average); null without a reference column.</summary>
    public double? TagPrecision { get; }

    /// <summary>Reference tags that were generated, over all reference tags (micro-average); null without a reference column.</summary>
    public double? TagRecall { get; }

    /// <summary>Harmonic mean of <see cref="TagPrecision"/> and <see cref="TagRecall"/>; null without a reference column.</summary>
    public double? TagF1 { get; }

    /// <summary>Counts over rows of generated text against reference text.</summary>
    internal readonly record struct GenerationCounts(int ExactMatches, long TruePositives, long GeneratedTags, long ReferenceTags);
}
