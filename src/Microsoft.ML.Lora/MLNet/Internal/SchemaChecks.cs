using System.Reflection;
using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>Input column checks with ML.NET's wording ("Could not find ... column", "Schema mismatch for ... column").</summary>
internal static class SchemaChecks
{
    private static readonly string Expected = TextDataViewType.Instance.ToString();

    /// <summary>Index of the scalar text column <paramref name="name"/> of <paramref name="schema"/>.</summary>
    public static int TextColumn(DataViewSchema schema, string name, string role, string paramName)
    {
        var column = schema.GetColumnOrNull(name) ?? throw Missing(name, role, paramName);
        if (column.Type is not TextDataViewType)
            throw Mismatch(name, role, column.Type.ToString() ?? column.Type.GetType().Name, paramName);
        return column.Index;
    }

    public static void TextColumn(SchemaShape shape, string name, string role, string paramName)
    {
        var found = shape.Where(c => c.Name == name).ToList();
        if (found.Count == 0)
            throw Missing(name, role, paramName);
        var column = found[^1];
        if (column.Kind != SchemaShape.Column.VectorKind.Scalar || column.ItemType is not TextDataViewType)
        {
            string actual = column.Kind == SchemaShape.Column.VectorKind.Scalar ? $"{column.ItemType}" : $"vector of {column.ItemType}";
            throw Mismatch(name, role, actual, paramName);
        }
    }

    private static ArgumentOutOfRangeException Missing(string name, string role, string paramName) =>
        new(paramName, $"Could not find {role} column '{name}'. The {role} column must be of type {Expected}.");

    private static ArgumentOutOfRangeException Mismatch(string name, string role, string actual, string paramName) =>
        new(paramName, $"Schema mismatch for {role} column '{name}': expected {Expected}, got {actual}.");

    /// <summary>
    /// A scalar text <see cref="SchemaShape.Column"/>. Its constructor is internal to ML.NET and not among the
    /// publicized types (it is a nested type), so it is reached by reflection.
    /// </summary>
    public static SchemaShape.Column TextColumnShape(string name)
    {
        var ctor = typeof(SchemaShape.Column).GetConstructors(BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public)
            .Single(c => c.GetParameters().Length == 5);
        return (SchemaShape.Column)ctor.Invoke(new object?[] { name, SchemaShape.Column.VectorKind.Scalar, TextDataViewType.Instance, false, null });
    }
}
