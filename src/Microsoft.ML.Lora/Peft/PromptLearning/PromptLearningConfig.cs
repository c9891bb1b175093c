using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// The fields every prompt-learning method shares, with PEFT's names and defaults (peft/config.py
/// <c>PromptLearningConfig</c>): virtual tokens learned in front of the input (prompt tuning, P-tuning) or in front
/// of every layer's keys and values (prefix tuning). The sizes left null are filled from the model's config as PEFT's
/// <c>_prepare_prompt_learning_config</c> does (<see cref="Resolve"/>).
/// </summary>
public abstract record PromptLearningConfig : PeftConfig
{
    /// <summary><c>num_virtual_tokens</c>: how many virtual tokens (PEFT has no default; 8 to 100 are usual).</summary>
    public required int NumVirtualTokens { get; init; }
    /// <summary><c>token_dim</c>: size of a virtual token; null takes hidden_size (prefix tuning: key/value heads × head_dim).</summary>
    public int? TokenDim { get; init; }
    /// <summary><c>num_transformer_submodules</c>: 1 for a causal LM (null: 1).</summary>
    public int? NumTransformerSubmodules { get; init; }
    /// <summary><c>num_attention_heads</c>: null takes the model's (prefix tuning: its key/value heads).</summary>
    public int? NumAttentionHeads { get; init; }
    /// <summary><c>num_layers</c>: null takes num_hidden_layers.</summary>
    public int? NumLayers { get; init; }

    /// <summary>PEFT's checks: a positive number of virtual tokens, one transformer submodule, no modules_to_save.</summary>
    public override void Validate()
    {
        if (NumVirtualTokens <= 0) throw new ArgumentException($"{GetType().Name}.NumVirtualTokens must be positive, got {NumVirtualTokens}.");
        if (NumTransformerSubmodules is int s && s != 1)
            throw new ArgumentException($"{GetType().Name}.NumTransformerSubmodules is {s}; a causal LM has 1.");
        if (ModulesToSave is { Count: > 0 })
            throw new ArgumentException($"{GetType().Name}.ModulesToSave is not supported with prompt learning; the prompt is the only trained part.");
    }

    /// <summary>The config with the null sizes filled from <paramref name="model"/> (PEFT's _prepare_prompt_learning_config).</summary>
    public virtual PromptLearningConfig Resolve(ModelConfig model)
    {
        if (NumVirtualTokens <= 0) throw new ArgumentException($"{GetType().Name}.NumVirtualTokens must be positive, got {NumVirtualTokens}.");
        return this with
        {
            NumLayers = NumLayers ?? model.NumLayers,
            TokenDim = TokenDim ?? model.HiddenSize,
            NumAttentionHeads = NumAttentionHeads ?? model.NumHeads,
            NumTransformerSubmodules = NumTransformerSubmodules ?? 1,
        };
    }

    /// <summary>The method's fields of adapter_config.json as PEFT 0.18 writes them (the fields of every method are added by the spine).</summary>
    internal virtual JsonObject ToJson() => new()
    {
        ["num_attention_heads"] = NumAttentionHeads,
        ["num_layers"] = NumLayers,
        ["num_transformer_submodules"] = NumTransformerSubmodules,
        ["num_virtual_tokens"] = NumVirtualTokens,
        ["peft_version"] = IA3Model.PeftVersion,
        ["token_dim"] = TokenDim,
    };

    /// <summary>
    /// Reads the shared fields of an adapter_config.json object (at <paramref name="path"/>) into <paramref name="config"/>,
    /// made by the method with <see cref="ReadVirtualTokens"/>.
    /// </summary>
    internal static T ReadShared<T>(T config, JsonObject j, string path) where T : PromptLearningConfig
    {
        if (PeftJson.Int(j, "num_transformer_submodules", path) is int s && s != 1)
            throw new PeftConfigException($"'{path}': num_transformer_submodules {s}; a causal LM has 1.", path, "num_transformer_submodules");
        return config with
        {
            TokenDim = PeftJson.Int(j, "token_dim", path),
            NumTransformerSubmodules = PeftJson.Int(j, "num_transformer_submodules", path),
            NumAttentionHeads = PeftJson.Int(j, "num_attention_heads", path),
            NumLayers = PeftJson.Int(j, "num_layers", path),
        };
    }

    /// <summary>num_virtual_tokens of an adapter_config.json object; required.</summary>
    internal static int ReadVirtualTokens(JsonObject j, string path) => PeftJson.Int(j, "num_virtual_tokens", path)
        ?? throw new PeftConfigException($"'{path}' has no num_virtual_tokens.", path, "num_virtual_tokens");
}
