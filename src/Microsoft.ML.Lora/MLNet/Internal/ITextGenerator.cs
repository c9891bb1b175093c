namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// What the ML.NET layer needs from a fine-tuned causal LM: generate completions and write the adapter.
/// Implemented by the TorchSharp backend (and by fakes in tests). Calls may come from several threads;
/// <see cref="SharedTextGenerator"/> serializes them.
/// </summary>
internal interface ITextGenerator : IDisposable
{
    /// <summary>Completions of <paramref name="prompts"/>, one per prompt, in order, with the settings <paramref name="generation"/> (validated).</summary>
    IReadOnlyList<string> Generate(IReadOnlyList<string> prompts, LoraGenerationOptions generation);

    /// <summary>
    /// Completions of prompts given as token ids of the base model's tokenizer (already with the special prefix, e.g.
    /// BOS, that the text path adds), one per prompt, in order; an empty prompt is conditioned as the text path does.
    /// </summary>
    IReadOnlyList<string> GenerateFromIds(IReadOnlyList<int[]> promptIds, LoraGenerationOptions generation);

    /// <summary>
    /// The summed cross-entropy of the completion tokens of <paramref name="examples"/> given their prompts, and how many
    /// tokens there are: the tokens and the masking of training (completion + EOS, prompt masked, cut to the length), no dropout.
    /// </summary>
    (double Sum, long Tokens) CompletionLoss(IReadOnlyList<PromptCompletion> examples);

    /// <summary>Restarts the sampling generator from <paramref name="seed"/>: the next samples repeat those drawn after the same seed.</summary>
    void ResetSampling(int seed);

    /// <summary>Writes the adapter in the PEFT format (adapter_config.json, adapter_model.safetensors) into an existing empty folder.</summary>
    void SaveAdapter(string folder);
}

/// <summary>
/// One training example read from the prompt and completion columns: text, or token ids when the column holds them
/// (<see cref="PromptIds"/> / <see cref="CompletionIds"/> non-null; the text is then empty and not used).
/// </summary>
internal readonly record struct PromptCompletion(string Prompt, string Completion, int[]? PromptIds = null, int[]? CompletionIds = null);

/// <summary>What a backend's Train reports to and is stopped by.</summary>
/// <param name="Log">Lines for the MLContext log (progress lines, the PEFT parameter count, the end summary).</param>
/// <param name="Warning">Warnings for the MLContext log.</param>
/// <param name="Progress">Typed progress, or null.</param>
/// <param name="CheckAlive">Called before every optimizer step; throws <see cref="OperationCanceledException"/> once cancelled.</param>
internal sealed record TrainingControl(Action<string> Log, Action<string> Warning, IProgress<LoraTrainingProgress>? Progress, Action CheckAlive);

/// <summary>One prompt read from the prompt column: its text, or its token ids when <see cref="Ids"/> is non-null.</summary>
internal readonly record struct PromptInput(string Text, int[]? Ids);

/// <summary>
/// Trains and loads <see cref="ITextGenerator"/>s. Saved models name the factory type, so a factory must have a public
/// parameterless constructor; only types of this assembly or of its friends can implement this internal interface.
/// </summary>
internal interface ITextGeneratorFactory
{
    /// <summary>
    /// Fine-tunes a LoRA adapter on <paramref name="examples"/> over the base model of <paramref name="options"/>,
    /// validating on <paramref name="validation"/> when given; <paramref name="control"/> carries the log, the typed
    /// progress and the cancellation checks.
    /// </summary>
    ITextGenerator Train(LoraCausalLmOptions options, IReadOnlyList<PromptCompletion> examples, IReadOnlyList<PromptCompletion>? validation, TrainingControl control);

    /// <summary>
    /// Loads the base model of <paramref name="options"/> (its folder was checked against the saved fingerprint) with the
    /// adapter saved in <paramref name="adapterFolder"/>, a temporary folder deleted once this returns.
    /// </summary>
    ITextGenerator Load(LoraCausalLmOptions options, string adapterFolder);
}

/// <summary>
/// Thrown by an <see cref="ITextGenerator"/> or <see cref="ITextGeneratorFactory.Train"/> for one prompt or completion
/// it cannot use (too long for the context, an id outside the vocabulary, text that cannot be tokenized); the ML.NET
/// layer names the row and column (<see cref="At"/>).
/// </summary>
/// <param name="index">The prompt's index in the call (the row's index in the data given to Train).</param>
/// <param name="problem">What is wrong and what to do, as the end of a sentence that starts with the row.</param>
/// <param name="inner">The lower-level error, if any.</param>
/// <param name="completion">The completion, not the prompt, is at fault.</param>
/// <param name="validation">The row is one of the validation data.</param>
internal sealed class PromptException(int index, string problem, Exception? inner = null, bool completion = false, bool validation = false)
    : Exception(problem, inner)
{
    /// <summary>The prompt's index in the call.</summary>
    public int Index { get; } = index;

    /// <summary>The completion column, not the prompt column, is at fault.</summary>
    public bool InCompletion { get; } = completion;

    /// <summary>
    /// The user's error: row <paramref name="firstRow"/> + <see cref="Index"/> (null: the row is not counted, a
    /// PredictionEngine's) of <paramref name="column"/>.
    /// </summary>
    public DataRowException At(long? firstRow, string column)
    {
        long? row = firstRow + Index;
        string data = validation ? " of the validation data" : "";
        string where = row is long r ? $"Row {r} (counting from 0){data}, column '{column}'" : $"Column '{column}' of the row";
        return new DataRowException($"{where}: {Message}", row, column, InnerException);
    }
}
