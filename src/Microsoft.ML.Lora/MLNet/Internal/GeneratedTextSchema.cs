using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.MLNet;

internal static class GeneratedTextSchema
{
    /// <summary><paramref name="input"/> with a text column <paramref name="name"/> appended (hiding one of the same name).</summary>
    public static DataViewSchema Append(DataViewSchema input, string name)
    {
        var builder = new DataViewSchema.Builder();
        builder.AddColumns(input);
        builder.AddColumn(name, TextDataViewType.Instance);
        return builder.ToSchema();
    }
}
