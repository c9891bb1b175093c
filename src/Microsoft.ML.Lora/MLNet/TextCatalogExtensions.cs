using System.Globalization;
using System.Text;
using Microsoft.ML.Transforms;

namespace Microsoft.ML;

/// <summary>Adds <c>ConcatenateText</c> to <c>mlContext.Transforms.Text</c>.</summary>
public static class LoraTextCatalogExtensions
{
    /// <summary>Most input columns that <c>ConcatenateText</c> joins (the limit of ML.NET's Expression transform).</summary>
    public const int MaxInputColumns = 5;

    /// <summary>
    /// Joins scalar text columns into one scalar text column: <c>input0 + separator + input1 + separator + ...</c>.
    /// (ML.NET's <c>Transforms.Concatenate</c> makes a vector instead.) An empty value (ML.NET text has no null: a null
    /// string of a class becomes empty) joins as empty, so the separators stay: "a" and "" give "a" + separator.
    /// Built on ML.NET's <c>Transforms.Expression</c> (<c>concat</c>), so it is saved and loaded with the model and its
    /// estimator's schema errors name the column and the expected type (String). A loaded model checks its input with
    /// the Expression transform's own messages.
    /// </summary>
    /// <param name="catalog">The text transforms catalog, <c>mlContext.Transforms.Text</c>.</param>
    /// <param name="outputColumnName">Scalar text column added.</param>
    /// <param name="separator">Text put between consecutive inputs; may be empty. Any characters.</param>
    /// <param name="inputColumnNames">One to <see cref="MaxInputColumns"/> scalar text columns, in order.</param>
    public static LoraConcatenateTextEstimator ConcatenateText(this TransformsCatalog.TextTransforms catalog, string outputColumnName, string separator,
        params string[] inputColumnNames)
        => ConcatenateText(catalog, outputColumnName, inputColumnNames, separator);

    /// <summary>
    /// Joins scalar text columns into one scalar text column between a fixed prefix and suffix:
    /// <c>prefix + input0 + separator + input1 + ... + suffix</c>, e.g. a prompt template around one column:
    /// <c>ConcatenateText("Prompt", ["Quote"], suffix: " -&gt;: ")</c> gives <c>quote + " -&gt;: "</c>.
    /// Otherwise as <see cref="ConcatenateText(TransformsCatalog.TextTransforms, string, string, string[])"/>.
    /// </summary>
    /// <param name="catalog">The text transforms catalog, <c>mlContext.Transforms.Text</c>.</param>
    /// <param name="outputColumnName">Scalar text column added.</param>
    /// <param name="inputColumnNames">One to <see cref="MaxInputColumns"/> scalar text columns, in order.</param>
    /// <param name="separator">Text put between consecutive inputs; may be empty. Any characters.</param>
    /// <param name="prefix">Text put before the first input; may be empty. Any characters.</param>
    /// <param name="suffix">Text put after the last input; may be empty. Any characters.</param>
    public static LoraConcatenateTextEstimator ConcatenateText(this TransformsCatalog.TextTransforms catalog, string outputColumnName,
        string[] inputColumnNames, string separator = "", string prefix = "", string suffix = "")
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentException.ThrowIfNullOrEmpty(outputColumnName);
        ArgumentNullException.ThrowIfNull(separator);
        ArgumentNullException.ThrowIfNull(prefix);
        ArgumentNullException.ThrowIfNull(suffix);
        ArgumentNullException.ThrowIfNull(inputColumnNames);
        if (inputColumnNames.Length is 0 or > MaxInputColumns)
            throw new ArgumentOutOfRangeException(nameof(inputColumnNames), $"ConcatenateText joins 1 to {MaxInputColumns} text columns, got {inputColumnNames.Length}.");
        for (int i = 0; i < inputColumnNames.Length; i++)
            if (string.IsNullOrEmpty(inputColumnNames[i]))
                throw new ArgumentException($"Input column name {i} of ConcatenateText is empty.", nameof(inputColumnNames));

        var expressionEstimator = Lora.MLNet.ExpressionEstimators.Create(catalog, outputColumnName, inputColumnNames.ToArray(),
            Expression(separator, inputColumnNames.Length, prefix, suffix));
        return new LoraConcatenateTextEstimator(expressionEstimator, inputColumnNames.ToArray());
    }

    /// <summary>
    /// <c>(x0, x1) =&gt; concat(x0, "sep", x1)</c>; a single input is <c>x0 =&gt; concat(x0)</c> (text stays text); a
    /// non-empty prefix or suffix is a first or last literal: <c>x0 =&gt; concat(x0, " -&gt;: ")</c>.
    /// </summary>
    internal static string Expression(string separator, int count, string prefix = "", string suffix = "")
    {
        var parameters = Enumerable.Range(0, count).Select(i => "x" + i.ToString(CultureInfo.InvariantCulture)).ToList();
        string literal = Literal(separator);
        var args = new StringBuilder();
        if (prefix.Length > 0) args.Append(Literal(prefix)).Append(", ");
        for (int i = 0; i < count; i++)
        {
            if (i > 0 && separator.Length > 0) args.Append(", ").Append(literal);
            if (i > 0) args.Append(", ");
            args.Append(parameters[i]);
        }
        if (suffix.Length > 0) args.Append(", ").Append(Literal(suffix));
        return $"({string.Join(", ", parameters)}) => concat({args})";
    }

    /// <summary>A string literal of ML.NET's expression language: C#-style backslash escapes.</summary>
    private static string Literal(string text)
    {
        var sb = new StringBuilder("\"");
        foreach (char c in text)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    if (char.IsControl(c)) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        return sb.Append('"').ToString();
    }
}

/// <summary>
/// Joins scalar text columns with a separator into a scalar text column; made by
/// <c>mlContext.Transforms.Text.ConcatenateText</c>. Checks that every input column is scalar text, naming the column
/// otherwise, then fits ML.NET's Expression transform (<c>concat</c>), which is what is saved with the model.
/// </summary>
public sealed class LoraConcatenateTextEstimator : IEstimator<ExpressionTransformer>
{
    private readonly ExpressionEstimator _expression;
    private readonly string[] _inputColumnNames;

    internal LoraConcatenateTextEstimator(ExpressionEstimator expression, string[] inputColumnNames)
    {
        _expression = expression;
        _inputColumnNames = inputColumnNames;
    }

    /// <summary>Checks that the input columns are scalar text and returns the schema with the joined text column added.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        foreach (var name in _inputColumnNames)
            Microsoft.ML.Lora.MLNet.SchemaChecks.TextColumn(inputSchema, name, "input", nameof(inputSchema));
        return _expression.GetOutputSchema(inputSchema);
    }

    /// <summary>Checks that the input columns are scalar text and returns the Expression transformer that joins them.</summary>
    public ExpressionTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        foreach (var name in _inputColumnNames)
            Microsoft.ML.Lora.MLNet.SchemaChecks.TextColumn(input.Schema, name, "input", nameof(input));
        return _expression.Fit(input);
    }
}
