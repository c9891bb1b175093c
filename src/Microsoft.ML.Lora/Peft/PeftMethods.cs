using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Peft;

/// <summary>A PEFT method: its <c>peft_type</c>, how its config is read from adapter_config.json, and its tuner.</summary>
/// <param name="PeftType">The name in adapter_config.json ("LORA").</param>
/// <param name="ReadConfig">Reads the method's config from the parsed JSON; the second argument is the file's path, for messages.</param>
/// <param name="CreateTuner">Makes the (empty) tuner of a model; adapters are added to it.</param>
internal sealed record PeftMethod(string PeftType, Func<JsonObject, string, PeftConfig> ReadConfig, Func<CausalLm, IPeftTuner> CreateTuner);

/// <summary>
/// The registry of PEFT methods (PEFT's PEFT_TYPE_TO_CONFIG_MAPPING and PEFT_TYPE_TO_TUNER_MAPPING). A method is a
/// folder under Peft/ (config, layers, tuner) plus one line here; docs/peft-methods.md "Adding a method" shows how.
/// </summary>
internal static class PeftMethods
{
    private static readonly PeftMethod[] All =
    [
        new("LORA", LoraConfigJson.Read, model => new LoraModel(model)),
        new("IA3", IA3Config.Read, model => new IA3Model(model)),
        new("PROMPT_TUNING", PromptTuningConfig.Read, model => new PromptLearningModel(model)),
        new("P_TUNING", PromptEncoderConfig.Read, model => new PromptLearningModel(model)),
        new("PREFIX_TUNING", PrefixTuningConfig.Read, model => new PromptLearningModel(model)),
    ];

    /// <summary>The peft_type names the library supports.</summary>
    public static IEnumerable<string> Names => All.Select(m => m.PeftType);

    /// <summary>The method of <paramref name="peftType"/>; <paramref name="source"/> (a file) is named in the error.</summary>
    public static PeftMethod Get(string peftType, string? source = null) =>
        All.FirstOrDefault(m => m.PeftType == peftType)
        ?? throw new PeftConfigException($"{(source is null ? "" : $"'{source}': ")}peft_type '{peftType}' is not supported; supported: {string.Join(", ", Names)}.", source, "peft_type");
}
