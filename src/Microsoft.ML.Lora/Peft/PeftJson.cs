using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// Typed readers of adapter_config.json values shared by the methods: a value of the wrong type is a
/// <see cref="PeftConfigException"/> naming the file, the field, the value and the expected type.
/// </summary>
internal static class PeftJson
{
    /// <summary>An integer field, or null when absent or null.</summary>
    public static int? Int(JsonObject j, string key, string path) => Get(j, key, path, "an integer", n => n.GetValue<int>());
    /// <summary>A number field, or null when absent or null.</summary>
    public static double? Double(JsonObject j, string key, string path) => Get(j, key, path, "a number", n => n.GetValue<double>());
    /// <summary>A boolean field, or null when absent or null.</summary>
    public static bool? Bool(JsonObject j, string key, string path) => Get(j, key, path, "true or false", n => n.GetValue<bool>());
    /// <summary>A string field, or null when absent or null.</summary>
    public static string? String(JsonObject j, string key, string path) => GetRef(j, key, path, "a string", n => n.GetValue<string>());

    /// <summary>A list of strings, or a single string as a one-element list, or null.</summary>
    public static List<string>? Strings(JsonObject j, string key, string? path = null) => j[key] switch
    {
        JsonArray a => a.Select(x => x is JsonValue v && v.TryGetValue(out string? s) ? s : throw Wrong(path, key, j[key], "a list of strings")).ToList(),
        JsonValue v when v.TryGetValue(out string? s) => [s],
        null => null,
        var other => throw Wrong(path, key, other, "a string or a list of strings"),
    };

    private static T? Get<T>(JsonObject j, string key, string path, string expected, Func<JsonNode, T> read) where T : struct
    {
        if (j[key] is not { } node) return null;
        try { return read(node); }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Wrong(path, key, node, expected, e); }
    }

    private static T? GetRef<T>(JsonObject j, string key, string path, string expected, Func<JsonNode, T> read) where T : class
    {
        if (j[key] is not { } node) return null;
        try { return read(node); }
        catch (Exception e) when (e is InvalidOperationException or FormatException) { throw Wrong(path, key, node, expected, e); }
    }

    private static PeftConfigException Wrong(string? path, string key, JsonNode? value, string expected, Exception? inner = null) =>
        new($"'{path ?? PeftAdapterIO.ConfigFile}': field '{key}' is {value?.ToJsonString() ?? "null"}; expected {expected}.", path, key, inner);
}
