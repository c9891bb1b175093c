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

    /// <summary>What a token id column must be: a vector of Int32, of any (usually variable) length.</summary>
    public static readonly string ExpectedTokens = new VectorDataViewType(NumberDataViewType.Int32).ToString();

    /// <summary>Index of the token id column <paramref name="name"/> (vector of Int32) of <paramref name="schema"/>.</summary>
    public static int TokensColumn(DataViewSchema schema, string name, string role, string paramName)
    {
        var column = schema.GetColumnOrNull(name) ?? throw Missing(name, role, paramName, ExpectedTokens);
        if (column.Type is not VectorDataViewType { ItemType: var item } || item != NumberDataViewType.Int32)
            throw Mismatch(name, role, column.Type.ToString() ?? column.Type.GetType().Name, paramName, ExpectedTokens);
        return column.Index;
    }

    public static void TokensColumn(SchemaShape shape, string name, string role, string paramName)
    {
        var found = shape.Where(c => c.Name == name).ToList();
        if (found.Count == 0)
            throw Missing(name, role, paramName, ExpectedTokens);
        var column = found[^1];
        if (column.Kind == SchemaShape.Column.VectorKind.Scalar || column.ItemType != NumberDataViewType.Int32)
        {
            string actual = column.Kind == SchemaShape.Column.VectorKind.Scalar ? $"{column.ItemType}" : $"vector of {column.ItemType}";
            throw Mismatch(name, role, actual, paramName, ExpectedTokens);
        }
    }

    /// <summary>The prompt column: text when <paramref name="tokens"/> is false, token ids otherwise.</summary>
    public static int Column(DataViewSchema schema, string name, bool tokens, string role, string paramName) =>
        tokens ? TokensColumn(schema, name, role + " tokens", paramName) : TextColumn(schema, name, role, paramName);

    private static ArgumentOutOfRangeException Missing(string name, string role, string paramName, string? expected = null) =>
        new(paramName, $"Could not find {role} column '{name}'. The {role} column must be of type {expected ?? Expected}.");

    private static ArgumentOutOfRangeException Mismatch(string name, string role, string actual, string paramName, string? expected = null) =>
        new(paramName, $"Schema mismatch for {role} column '{name}': expected {expected ?? Expected}, got {actual}.");

    /// <summary>
    /// A scalar text <see cref="SchemaShape.Column"/>. Its constructor is internal to ML.NET and not among the
    /// publicized types (it is a nested type), so it is reached by reflection.
    /// </summary>
    public static SchemaShape.Column TextColumnShape(string name) =>
        ColumnShape(name, SchemaShape.Column.VectorKind.Scalar, TextDataViewType.Instance);

    /// <summary>A variable-length vector of Int32 <see cref="SchemaShape.Column"/> (token ids).</summary>
    public static SchemaShape.Column TokensColumnShape(string name) =>
        ColumnShape(name, SchemaShape.Column.VectorKind.VariableVector, NumberDataViewType.Int32);

    private static SchemaShape.Column ColumnShape(string name, SchemaShape.Column.VectorKind kind, DataViewType itemType)
    {
        var ctor = typeof(SchemaShape.Column).GetConstructors(BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public)
            .Single(c => c.GetParameters().Length == 5);
        return (SchemaShape.Column)ctor.Invoke(new object?[] { name, kind, itemType, false, null });
    }
}
