using System.Text.Json.Nodes;

namespace Microsoft.ML.Lora.Peft;

/// <summary>How prompt tuning's virtual tokens start (PEFT's <c>PromptTuningInit</c>).</summary>
public enum PromptTuningInit
{
    /// <summary><c>"RANDOM"</c>: N(0, 1), torch.nn.Embedding's own init.</summary>
    Random,
    /// <summary><c>"TEXT"</c>: the input embeddings of the tokens of <see cref="PromptTuningConfig.PromptTuningInitText"/>, repeated to fill the virtual tokens.</summary>
    Text,
    /// <summary><c>"SAMPLE_VOCAB"</c>: the input embeddings of tokens drawn uniformly from the vocabulary.</summary>
    SampleVocab,
}

/// <summary>
/// Prompt tuning (PEFT's <c>PromptTuningConfig</c>, Lester et al. 2021): <see cref="PromptLearningConfig.NumVirtualTokens"/>
/// learned input embeddings are put in front of every sequence; nothing else is trained.
/// </summary>
public sealed record PromptTuningConfig : PromptLearningConfig
{
    /// <summary><c>prompt_tuning_init</c> (default RANDOM).</summary>
    public PromptTuningInit PromptTuningInit { get; init; } = PromptTuningInit.Random;
    /// <summary><c>prompt_tuning_init_text</c>: the text whose token embeddings start the prompt (TEXT init).</summary>
    public string? PromptTuningInitText { get; init; }
    /// <summary><c>tokenizer_name_or_path</c>: the folder of the tokenizer that splits the init text (TEXT init).</summary>
    public string? TokenizerNameOrPath { get; init; }
    /// <summary><c>tokenizer_kwargs</c>: recorded in adapter_config.json as given (this library's tokenizer takes none).</summary>
    public JsonObject? TokenizerKwargs { get; init; }

    /// <inheritdoc/>
    public override string PeftType => "PROMPT_TUNING";

    /// <summary>PEFT's __post_init__ checks.</summary>
    public override void Validate()
    {
        base.Validate();
        if (PromptTuningInit == PromptTuningInit.Text && string.IsNullOrEmpty(TokenizerNameOrPath))
            throw new ArgumentException("PromptTuningConfig: PromptTuningInit.Text needs TokenizerNameOrPath (the tokenizer folder).");
        if (PromptTuningInit == PromptTuningInit.Text && PromptTuningInitText is null)
            throw new ArgumentException("PromptTuningConfig: PromptTuningInit.Text needs PromptTuningInitText.");
        if (TokenizerKwargs is { Count: > 0 } && PromptTuningInit != PromptTuningInit.Text)
            throw new ArgumentException("PromptTuningConfig: TokenizerKwargs is only valid with PromptTuningInit.Text.");
    }

    /// <inheritdoc/>
    internal override JsonObject ToJson()
    {
        var j = base.ToJson();
        j["prompt_tuning_init"] = PromptTuningInit switch { PromptTuningInit.Text => "TEXT", PromptTuningInit.SampleVocab => "SAMPLE_VOCAB", _ => "RANDOM" };
        j["prompt_tuning_init_text"] = PromptTuningInitText;
        j["tokenizer_kwargs"] = TokenizerKwargs?.DeepClone();
        j["tokenizer_name_or_path"] = TokenizerNameOrPath;
        return j;
    }

    /// <summary>Reads the fields of a PROMPT_TUNING adapter_config.json object (the registry's reader).</summary>
    internal static PeftConfig Read(JsonObject j, string path) => ReadShared(new PromptTuningConfig
    {
        NumVirtualTokens = ReadVirtualTokens(j, path),
        PromptTuningInit = PeftJson.String(j, "prompt_tuning_init", path) switch
        {
            "TEXT" => PromptTuningInit.Text,
            "SAMPLE_VOCAB" => PromptTuningInit.SampleVocab,
            "RANDOM" or null => PromptTuningInit.Random,
            var s => throw new PeftConfigException($"'{path}': unknown prompt_tuning_init '{s}' (RANDOM, TEXT or SAMPLE_VOCAB).", path, "prompt_tuning_init"),
        },
        PromptTuningInitText = PeftJson.String(j, "prompt_tuning_init_text", path),
        TokenizerNameOrPath = PeftJson.String(j, "tokenizer_name_or_path", path),
        TokenizerKwargs = j["tokenizer_kwargs"] as JsonObject is { } k ? (JsonObject)k.DeepClone() : null,
    }, j, path);
}
