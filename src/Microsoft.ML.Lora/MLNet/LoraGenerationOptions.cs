namespace Microsoft.ML.Lora;

/// <summary>
/// Text generation settings of <see cref="LoraCausalLmTransformer"/>; saved with the model. They can be changed after
/// Fit or Load through <see cref="LoraCausalLmTransformer.Generation"/>: each Transform cursor and Predict call reads
/// them when it generates.
/// </summary>
public sealed class LoraGenerationOptions
{
    /// <summary>Most tokens generated for one prompt. Default 64.</summary>
    public int MaxNewTokens { get; set; } = 64;

    /// <summary>
    /// Sampling temperature; 0 means greedy decoding (transformers' do_sample=False). Sampling draws from the
    /// transformer's own generator, seeded with <see cref="LoraCausalLmOptions.Seed"/>, which advances from call to call
    /// (see <see cref="LoraCausalLmTransformer.ResetSampling"/>). Not negative. Default 0.
    /// </summary>
    public float Temperature { get; set; }

    /// <summary>Nucleus sampling threshold in (0, 1], used when <see cref="Temperature"/> is above 0. Default 1 (off).</summary>
    public float TopP { get; set; } = 1f;

    /// <summary>Keep the K most likely tokens when sampling; 0 is off. Default 0.</summary>
    public int TopK { get; set; }

    /// <summary>Hugging Face repetition penalty, positive; 1 is off. Default 1.</summary>
    public float RepetitionPenalty { get; set; } = 1f;

    /// <summary>
    /// Strings that end the generation of a row, as transformers' stop_strings: generation stops at the token whose
    /// text completes one of them (the string ends within that token's text); the output keeps the text generated up
    /// to there. An occurrence earlier in the text has already stopped it. Default none.
    /// </summary>
    public string[] StopStrings { get; set; } = [];

    /// <summary>
    /// What to do with a prompt whose tokens plus <see cref="MaxNewTokens"/> exceed the model's context
    /// (max_position_embeddings; for models without one, such as BLOOM, <see cref="LoraTrainingOptions.MaxSequenceLength"/>).
    /// Checked before any work. Default <see cref="LongPromptPolicy.Error"/>.
    /// </summary>
    public LongPromptPolicy LongPrompts { get; set; } = LongPromptPolicy.Error;

    /// <summary>Prompts generated together when a transformed data view is read. Default 8.</summary>
    public int BatchSize { get; set; } = 8;

    internal LoraGenerationOptions Clone()
    {
        var copy = (LoraGenerationOptions)MemberwiseClone();
        copy.StopStrings = (string[])(StopStrings ?? []).Clone();
        return copy;
    }

    /// <summary>Throws naming the first setting out of range.</summary>
    internal void Validate()
    {
        static void Require(bool ok, string name, string what, object value)
        {
            if (!ok) throw new ArgumentOutOfRangeException(name, $"LoraGenerationOptions.{name} {what}, got {value}.");
        }
        Require(MaxNewTokens > 0, nameof(MaxNewTokens), "must be positive", MaxNewTokens);
        Require(BatchSize > 0, nameof(BatchSize), "must be positive", BatchSize);
        Require(Enum.IsDefined(LongPrompts), nameof(LongPrompts), "must be Error or TruncateLeft", LongPrompts);
        Require(float.IsFinite(Temperature) && Temperature >= 0, nameof(Temperature), "must be 0 (greedy) or a positive finite number", Temperature);
        Require(TopP is > 0 and <= 1, nameof(TopP), "must be in (0, 1]", TopP);
        Require(TopK >= 0, nameof(TopK), "must be 0 (off) or positive", TopK);
        Require(float.IsFinite(RepetitionPenalty) && RepetitionPenalty > 0, nameof(RepetitionPenalty), "must be a positive finite number", RepetitionPenalty);
        Require(StopStrings != null && StopStrings.All(s => !string.IsNullOrEmpty(s)), nameof(StopStrings), "must not be null or hold null or empty strings",
            StopStrings == null ? "null" : $"[{string.Join(", ", StopStrings.Select(s => s == null ? "null" : $"\"{s}\""))}]");
    }
}

/// <summary>What generation does with a prompt too long for the model's context (<see cref="LoraGenerationOptions.LongPrompts"/>).</summary>
public enum LongPromptPolicy
{
    /// <summary>Throw a <see cref="DataRowException"/> naming the row, before generating anything.</summary>
    Error,
    /// <summary>
    /// Keep the prompt's last tokens, as many as leave room for <see cref="LoraGenerationOptions.MaxNewTokens"/>
    /// (transformers' text-generation pipeline with handle_long_generation="hole").
    /// </summary>
    TruncateLeft,
}
