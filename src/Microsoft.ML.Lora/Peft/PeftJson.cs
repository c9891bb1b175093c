using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora.Peft;

/// <summary>Small readers of adapter_config.json values shared by the methods.</summary>
internal static class PeftJson
{
    /// <summary>A list of strings, or a single string as a one-element list, or null.</summary>
    public static List<string>? Strings(JsonObject j, string key) => j[key] switch
    {
        JsonArray a => a.Select(x => x!.GetValue<string>()).ToList(),
        JsonValue v when v.TryGetValue(out string? s) => [s],
        _ => null,
    };
}
