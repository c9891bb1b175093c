using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>What the data views and row mappers of this library share: the input schema plus one computed column.</summary>
internal static class AppendedColumn
{
    /// <summary><paramref name="input"/> with a column <paramref name="name"/> appended (hiding one of the same name).</summary>
    public static DataViewSchema Schema(DataViewSchema input, string name, DataViewType type)
    {
        var builder = new DataViewSchema.Builder();
        builder.AddColumns(input);
        builder.AddColumn(name, type);
        return builder.ToSchema();
    }

    /// <summary>The input columns needed for the active output columns: the appended one (index input.Count) reads <paramref name="sourceIndex"/>.</summary>
    public static IEnumerable<DataViewSchema.Column> Dependencies(DataViewSchema input, int sourceIndex, IEnumerable<int> active)
    {
        var needed = new SortedSet<int>();
        foreach (int i in active) needed.Add(i == input.Count ? sourceIndex : i);
        return needed.Select(i => input[i]).ToList();
    }
}

/// <summary>A row-to-row mapper that adds nothing: the rows pass through as they are.</summary>
internal sealed class IdentityRowMapper(DataViewSchema schema) : IRowToRowMapper
{
    public DataViewSchema InputSchema => schema;

    public DataViewSchema OutputSchema => schema;

    public IEnumerable<DataViewSchema.Column> GetDependencies(IEnumerable<DataViewSchema.Column> dependingColumns) => dependingColumns.ToList();

    public DataViewRow GetRow(DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns) => input;
}
