using Microsoft.ML.Data;
using Microsoft.ML.Lora.MLNet;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Lora;

/// <summary>
/// Fine-tunes a LoRA adapter of a Hugging Face causal language model on the prompt and completion columns (text, or
/// token ids made with <c>mlContext.Lora().Tokenize</c>);
/// <see cref="Fit(IDataView)"/> returns a <see cref="LoraCausalLmTransformer"/> that generates completions.
/// Create it with <c>mlContext.Lora().CausalLm(...)</c>.
/// </summary>
public sealed class LoraCausalLmTrainer : IEstimator<LoraCausalLmTransformer>
{
    private readonly IHost _host;
    private readonly LoraCausalLmOptions _options;
    private readonly ITextGeneratorFactory _factory;

    internal LoraCausalLmTrainer(IHostEnvironment env, LoraCausalLmOptions options, ITextGeneratorFactory? factory = null)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(options);
        _host = env.Register(nameof(LoraCausalLmTrainer));
        Validate(options);
        _options = options.Clone();
        // The seed of the checkpoint being resumed, else the MLContext's seed decides, as for ML.NET's trainers.
        _options.Seed ??= options.Training.ResumeFromCheckpoint is { Length: > 0 } resume
            ? Training.TrainerState.Read(resume).Seed
            : _host.Rand.Next();
        _factory = factory ?? TextGeneratorFactories.Default;
    }

    /// <summary>
    /// Checks that <paramref name="inputSchema"/> has the prompt and completion columns (scalar text, or vector of Int32
    /// for token columns) and returns it with the generated text column added.
    /// </summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        Check(inputSchema, _options.PromptColumn, _options.PromptIsTokens, "prompt");
        Check(inputSchema, _options.CompletionColumn, _options.CompletionIsTokens, "completion");
        var columns = inputSchema.Where(c => c.Name != _options.OutputColumnName).ToList();
        columns.Add(SchemaChecks.TextColumnShape(_options.OutputColumnName));
        return new SchemaShape(columns);
    }

    /// <summary>Reads every prompt and completion of <paramref name="input"/> and fine-tunes the adapter on them.</summary>
    public LoraCausalLmTransformer Fit(IDataView input) => Fit(input, null);

    /// <summary>
    /// Fine-tunes the adapter on <paramref name="input"/>; when <paramref name="validationData"/> is given (same columns),
    /// its mean completion token loss is computed every <see cref="LoraTrainingOptions.LoggingSteps"/> steps and at the
    /// end, reported in <see cref="LoraTrainingProgress.ValidationLoss"/> and the log, and drives
    /// <see cref="LoraTrainingOptions.EarlyStoppingPatience"/> and <see cref="LoraTrainingOptions.LoadBestModelAtEnd"/>.
    /// Stops before the next step with <see cref="OperationCanceledException"/> after <c>mlContext.CancelExecution()</c>
    /// or when <see cref="LoraCausalLmOptions.CancellationToken"/> is cancelled.
    /// </summary>
    public LoraCausalLmTransformer Fit(IDataView input, IDataView? validationData)
    {
        ArgumentNullException.ThrowIfNull(input);
        var examples = Read(input, nameof(input));
        if (examples.Count == 0)
            throw new InvalidOperationException("The training data has no rows.");
        var validation = validationData is null ? null : Read(validationData, nameof(validationData));
        if (validation is { Count: 0 })
            throw new InvalidOperationException("The validation data has no rows; pass null for no validation.");
        if (validation is null && (_options.Training.EarlyStoppingPatience > 0 || _options.Training.LoadBestModelAtEnd))
            throw new InvalidOperationException("LoraTrainingOptions.EarlyStoppingPatience and LoadBestModelAtEnd need validation data: call Fit(train, validationData).");
        var baseModel = BaseModelReference.Of(_options.BaseModelFolder);
        var options = _options.Clone();
        options.BaseModelFolder = baseModel.Folder;

        ITextGenerator generator;
        using (var ch = _host.Start("Training"))
        {
            ch.Info(MessageSensitivity.None, $"Fine-tuning a {options.Method?.PeftType ?? "LORA"} adapter of '{baseModel.Folder}' on {examples.Count} examples" +
                (validation is null ? "." : $", validating on {validation.Count}."));
            var control = new TrainingControl(
                message => ch.Info(MessageSensitivity.None, message),
                message => ch.Warning(MessageSensitivity.None, message),
                options.Progress,
                CheckAlive);
            try { generator = _factory.Train(options, examples, validation, control); }
            catch (PromptException e) { throw e.At(0, e.InCompletion ? _options.CompletionColumn : _options.PromptColumn); }
        }
        return new LoraCausalLmTransformer(_host, options, baseModel, _factory, generator);
    }

    /// <summary>The transformer of the PEFT adapter in <paramref name="adapterFolder"/> over the base model of the options (no training).</summary>
    internal LoraCausalLmTransformer LoadAdapter(string adapterFolder)
    {
        var baseModel = BaseModelReference.Of(_options.BaseModelFolder);
        var options = _options.Clone();
        options.BaseModelFolder = baseModel.Folder;
        var generator = _factory.Load(options, adapterFolder);
        return new LoraCausalLmTransformer(_host, options, baseModel, _factory, generator);
    }

    /// <summary>Throws <see cref="OperationCanceledException"/> once the MLContext or the options' token is cancelled.</summary>
    private void CheckAlive()
    {
        var token = _options.CancellationToken;
        if (token.IsCancellationRequested)
            throw new OperationCanceledException("Fit was cancelled through LoraCausalLmOptions.CancellationToken.", token);
        if (HostCancellation.IsCanceled(_host))
            throw new OperationCanceledException("Fit was cancelled through MLContext.CancelExecution().");
    }

    private List<PromptCompletion> Read(IDataView data, string paramName)
    {
        int prompt = SchemaChecks.Column(data.Schema, _options.PromptColumn, _options.PromptIsTokens, "prompt", paramName);
        int completion = SchemaChecks.Column(data.Schema, _options.CompletionColumn, _options.CompletionIsTokens, "completion", paramName);
        var examples = new List<PromptCompletion>();
        using var cursor = data.GetRowCursor(new[] { data.Schema[prompt], data.Schema[completion] });
        var getPrompt = PromptReader.Create(cursor, prompt, _options.PromptIsTokens);
        var getCompletion = PromptReader.Create(cursor, completion, _options.CompletionIsTokens);
        while (cursor.MoveNext())
        {
            var p = getPrompt();
            var c = getCompletion();
            examples.Add(new PromptCompletion(p.Text, c.Text, p.Ids, c.Ids));
        }
        return examples;
    }

    private static void Check(SchemaShape shape, string name, bool tokens, string role)
    {
        if (tokens) SchemaChecks.TokensColumn(shape, name, role + " tokens", nameof(shape));
        else SchemaChecks.TextColumn(shape, name, role, nameof(shape));
    }

    private static void Validate(LoraCausalLmOptions options)
    {
        Require(!string.IsNullOrWhiteSpace(options.BaseModelFolder), nameof(options.BaseModelFolder), "must name the base model folder");
        Require(string.IsNullOrEmpty(options.PromptColumnName) != string.IsNullOrEmpty(options.PromptTokensColumnName),
            nameof(options.PromptColumnName), "or PromptTokensColumnName: exactly one must be set (the prompt is read either as text or as token ids)");
        Require(string.IsNullOrEmpty(options.CompletionColumnName) != string.IsNullOrEmpty(options.CompletionTokensColumnName),
            nameof(options.CompletionColumnName), "or CompletionTokensColumnName: exactly one must be set (the completion is read either as text or as token ids)");
        Require(!string.IsNullOrEmpty(options.OutputColumnName), nameof(options.OutputColumnName), "must not be empty");
        Require(options.Method is null || options.Lora is null || options.Lora.IsDefault, nameof(options.Method),
            $"is {options.Method?.PeftType}: leave Lora at its defaults (set the method's settings in its config; a LoraConfig for LoRA settings)");
        if (options.Method is not null) options.ToPeftConfig().Validate(); // as it will be used (a TEXT init gets the base tokenizer)
        Require(options.NumberOfThreads is null or > 0, nameof(options.NumberOfThreads), $"must be null (automatic) or positive, got {options.NumberOfThreads}");
        Require(options.Lora is { Rank: > 0 }, "Lora.Rank", "must be positive");
        Require(options.Lora is { Alpha: > 0 } && float.IsFinite(options.Lora.Alpha), "Lora.Alpha", $"must be a positive finite number, got {options.Lora?.Alpha}");
        Require(options.Lora is { Dropout: >= 0 and < 1 }, "Lora.Dropout", $"must be in [0, 1), got {options.Lora?.Dropout}");
        Require(options.Training is { Epochs: > 0, BatchSize: > 0, MaxSequenceLength: > 0 }, "Training", "Epochs, BatchSize and MaxSequenceLength must be positive");
        Require(options.Training is { EarlyStoppingPatience: >= 0, SaveSteps: >= 0 }, "Training", "EarlyStoppingPatience and SaveSteps must be 0 (off) or positive");
        Require(options.Training.SaveSteps == 0 || !string.IsNullOrWhiteSpace(options.Training.CheckpointFolder), "Training.CheckpointFolder",
            "must name a folder when Training.SaveSteps is set");
        ArgumentNullException.ThrowIfNull(options.Generation, "options.Generation");
        options.Generation.Validate();
    }

    private static void Require(bool ok, string name, string what)
    {
        if (!ok) throw new ArgumentOutOfRangeException(name, $"LoraCausalLmOptions.{name} {what}.");
    }
}
