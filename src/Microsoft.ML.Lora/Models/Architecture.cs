using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora.Models;

/// <summary>How a family tells the model where a token is.</summary>
internal enum PositionRule
{
    /// <summary>A learned position embedding indexed by position id (GPT-2's wpe).</summary>
    Learned,
    /// <summary>Rotary embeddings of the position ids on q and k (LLaMA and its descendants).</summary>
    Rotary,
    /// <summary>ALiBi biases that follow the attention mask; position ids are ignored (BLOOM).</summary>
    Alibi,
}

/// <summary>
/// Everything the library knows about one <c>model_type</c>, in one place: how its config.json maps to
/// <see cref="ModelConfig"/> (with its transformers config class's defaults) and back, how its module tree is built
/// (Hugging Face parameter names), its linear layers for counting, PEFT's default target modules and how positions
/// enter. Each family declares its descriptions in its own file; <see cref="Architectures"/> lists them.
/// </summary>
/// <remarks>
/// Tokenizer behaviour (BOS added or not, byte fallback, prefix space) is not part of the architecture here: it comes
/// from the model folder's tokenizer.json and tokenizer_config.json, which already differ per family.
/// </remarks>
internal sealed record Architecture
{
    /// <summary><c>model_type</c> in config.json.</summary>
    public required string ModelType { get; init; }

    /// <summary>transformers' class (the <c>architectures</c> entry of config.json).</summary>
    public required string ClassName { get; init; }

    /// <summary>Maps a config.json (family key names, defaults for absent keys) to a <see cref="ModelConfig"/>.</summary>
    public required Func<ConfigReader, ModelConfig> ReadConfig { get; init; }

    /// <summary>Writes the mapped fields under the family's key names (the inverse of <see cref="ReadConfig"/>).</summary>
    public required Action<ModelConfig, JsonObject> WriteConfig { get; init; }

    /// <summary>The module tree, default-initialised, float32 on the CPU.</summary>
    public required Func<ModelConfig, CausalLm> Create { get; init; }

    /// <summary>Path of the list of blocks (<c>model.layers</c>, <c>transformer.h</c>).</summary>
    public required string LayersPath { get; init; }

    /// <summary>The linear layers of one block as (path under the block, in features, out features).</summary>
    public required Func<ModelConfig, IReadOnlyList<(string Path, long In, long Out)>> BlockLinears { get; init; }

    /// <summary>PEFT's default LoRA target modules (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING); null when PEFT has none.</summary>
    public IReadOnlyList<string>? LoraTargets { get; init; }

    /// <summary>PEFT's default IA3 target modules (TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING); null when PEFT has none.</summary>
    public IReadOnlyList<string>? Ia3Targets { get; init; }

    /// <summary>PEFT's default IA3 feed-forward modules (TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING); null when PEFT has none.</summary>
    public IReadOnlyList<string>? Ia3FeedforwardModules { get; init; }

    /// <summary>How positions enter the model.</summary>
    public required PositionRule Positions { get; init; }

    /// <summary>
    /// The family's keys of a tiny config.json (hidden size, layers, heads as given) for <see cref="TinyBaseModel"/>;
    /// the common keys (model_type, vocabulary, special tokens) are written by the caller.
    /// </summary>
    public required Action<JsonObject, (int Hidden, int Layers, int Heads)> TinyConfig { get; init; }

    /// <summary>PEFT's message when a LoRA config names no target modules and PEFT has no default for this type.</summary>
    public const string NoDefaultTargetsMessage = "Please specify `target_modules` or `target_parameters`in `peft_config`";
}
