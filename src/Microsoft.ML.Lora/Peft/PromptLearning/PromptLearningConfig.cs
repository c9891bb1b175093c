using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// The fields every prompt-learning method shares, with PEFT's names and defaults (peft/config.py
/// <c>PromptLearningConfig</c>): virtual tokens learned in front of the input (prompt tuning, P-tuning) or in front
/// of every layer's keys and values (prefix tuning). The sizes left null are filled from the model's config as PEFT's
/// <c>_prepare_prompt_learning_config</c> does (<see cref="Resolve"/>).
/// </summary>
public abstract record PromptLearningConfig
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
    /// <summary><c>base_model_name_or_path</c> written to adapter_config.json.</summary>
    public string? BaseModelNameOrPath { get; init; }
    /// <summary><c>inference_mode</c>: true for an adapter loaded from a folder, which holds only the prompt (not trainable).</summary>
    public bool InferenceMode { get; init; }

    /// <summary>PEFT's <c>peft_type</c> of the method.</summary>
    public abstract string PeftType { get; }

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

    /// <summary>adapter_config.json as PEFT 0.18 writes it (the shared fields; each method adds its own).</summary>
    public virtual JsonObject ToJson() => new()
    {
        ["auto_mapping"] = null,
        ["base_model_name_or_path"] = BaseModelNameOrPath,
        ["inference_mode"] = true,
        ["modules_to_save"] = null,
        ["num_attention_heads"] = NumAttentionHeads,
        ["num_layers"] = NumLayers,
        ["num_transformer_submodules"] = NumTransformerSubmodules,
        ["num_virtual_tokens"] = NumVirtualTokens,
        ["peft_type"] = PeftType,
        ["peft_version"] = IA3Model.PeftVersion,
        ["revision"] = null,
        ["task_type"] = "CAUSAL_LM",
        ["token_dim"] = TokenDim,
    };

    /// <summary>Reads the shared fields of an adapter_config.json object into <paramref name="config"/>.</summary>
    internal static T ReadShared<T>(T config, JsonObject j) where T : PromptLearningConfig => config with
    {
        TokenDim = j["token_dim"]?.GetValue<int>(),
        NumTransformerSubmodules = j["num_transformer_submodules"]?.GetValue<int>(),
        NumAttentionHeads = j["num_attention_heads"]?.GetValue<int>(),
        NumLayers = j["num_layers"]?.GetValue<int>(),
        BaseModelNameOrPath = j["base_model_name_or_path"]?.GetValue<string>(),
        InferenceMode = true,
    };

    /// <summary>Parses the adapter_config.json object of a prompt-learning adapter (PROMPT_TUNING, PREFIX_TUNING or P_TUNING).</summary>
    internal static PromptLearningConfig Read(JsonObject j, string path)
    {
        int n = j["num_virtual_tokens"]?.GetValue<int>() ?? throw new InvalidDataException($"'{path}' has no num_virtual_tokens.");
        if (j["num_transformer_submodules"]?.GetValue<int>() is int s && s != 1)
            throw new NotSupportedException($"'{path}': num_transformer_submodules {s}; a causal LM uses 1.");
        return j["peft_type"]?.GetValue<string>() switch
        {
            "PROMPT_TUNING" => PromptTuningConfig.FromJson(j, n),
            "PREFIX_TUNING" => PrefixTuningConfig.FromJson(j, n),
            "P_TUNING" => PromptEncoderConfig.FromJson(j, n),
            var t => throw new InvalidDataException($"'{path}' has peft_type '{t}', not a prompt-learning method."),
        };
    }
}
