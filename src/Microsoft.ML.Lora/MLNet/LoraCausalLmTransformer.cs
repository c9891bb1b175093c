using Microsoft.ML.Data;
using Microsoft.ML.Lora.MLNet;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Lora;

/// <summary>
/// A base causal language model with a fine-tuned LoRA adapter. <see cref="Transform"/> adds a text column with the
/// completion generated for each row's prompt (text, or token ids when trained with a prompt token column), lazily and in batches. Saved with <c>mlContext.Model.Save</c> as the
/// PEFT adapter, the generation options and a reference to the base model folder, never the base weights.
/// It owns the model (the weights): Dispose frees them, once no Transform cursor is open (docs/mlnet.md, "Disposal").
/// </summary>
public sealed class LoraCausalLmTransformer : ITransformer, IDisposable
{
    private readonly IHost _host;
    private readonly SharedTextGenerator _generator;

    internal LoraCausalLmTransformer(IHostEnvironment env, LoraCausalLmOptions options, BaseModelReference baseModel,
        ITextGeneratorFactory factory, ITextGenerator generator)
    {
        _host = env.Register(nameof(LoraCausalLmTransformer));
        Options = options;
        BaseModel = baseModel;
        Factory = factory;
        _generator = new SharedTextGenerator(generator, () => Options.Generation);
    }

    /// <summary>
    /// The generation settings used by later Transform cursors and Predict calls, and saved with the model. Change them
    /// in place (<c>model.Generation.MaxNewTokens = 8</c>) or assign new ones; they are checked when generating.
    /// </summary>
    public LoraGenerationOptions Generation
    {
        get => Options.Generation;
        set
        {
            ArgumentNullException.ThrowIfNull(value);
            value.Validate();
            Options.Generation = value;
        }
    }

    /// <summary>
    /// Restarts sampling from <paramref name="seed"/> (default: <see cref="LoraCausalLmOptions.Seed"/> of the model).
    /// Sampling draws from one generator per transformer that advances with every generated token, so two Predict
    /// calls give different samples; after the same reset, the same calls give the same samples again. Loading a saved
    /// model starts it from the saved seed.
    /// </summary>
    public void ResetSampling(int? seed = null) => _generator.ResetSampling(seed ?? Options.Seed.GetValueOrDefault());

    /// <summary>Name of the prompt text column read by <see cref="Transform"/>; null when it reads <see cref="PromptTokensColumnName"/>.</summary>
    public string? PromptColumnName => Options.PromptColumnName;

    /// <summary>Name of the prompt token id column (vector of Int32) read by <see cref="Transform"/>; null when it reads <see cref="PromptColumnName"/>.</summary>
    public string? PromptTokensColumnName => Options.PromptTokensColumnName;

    /// <summary>Name of the generated text column added by <see cref="Transform"/>.</summary>
    public string OutputColumnName => Options.OutputColumnName;

    /// <summary>Folder of the base model the adapter applies to.</summary>
    public string BaseModelFolder => BaseModel.Folder;

    internal LoraCausalLmOptions Options { get; }

    internal BaseModelReference BaseModel { get; }

    internal ITextGeneratorFactory Factory { get; }

    internal SharedTextGenerator Generator => _generator;

    /// <inheritdoc/>
    bool ITransformer.IsRowToRowMapper => true;

    /// <inheritdoc/>
    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        SchemaChecks.Column(inputSchema, Options.PromptColumn, Options.PromptIsTokens, "prompt", nameof(inputSchema));
        return AppendedColumn.Schema(inputSchema, OutputColumnName, TextDataViewType.Instance);
    }

    /// <summary>
    /// Adds the generated text column to <paramref name="input"/>. Nothing is generated until that column is read.
    /// </summary>
    public IDataView Transform(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        int prompt = SchemaChecks.Column(input.Schema, Options.PromptColumn, Options.PromptIsTokens, "prompt", nameof(input));
        return new GeneratedTextDataView(input, _generator, prompt, OutputColumnName, () => Options.Generation.BatchSize, Options.PromptIsTokens);
    }

    /// <inheritdoc/>
    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        int prompt = SchemaChecks.Column(inputSchema, Options.PromptColumn, Options.PromptIsTokens, "prompt", nameof(inputSchema));
        return new GeneratedTextRowMapper(inputSchema, _generator, prompt, OutputColumnName, Options.PromptIsTokens);
    }

    /// <inheritdoc/>
    void ICanSaveModel.Save(ModelSaveContext ctx) => LoraCausalLmModelFormat.Save(ctx, this);

    /// <summary>
    /// Frees the model (weights, tokenizer) as soon as no Transform cursor is reading it; a second call does nothing.
    /// ML.NET calls it too: a TransformerChain's Dispose, and a PredictionEngine's Dispose unless the engine was created
    /// with <c>new PredictionEngineOptions { OwnsTransformer = false }</c>. Afterwards PredictionEngines, new cursors,
    /// Save, Evaluate and ResetSampling throw <see cref="ObjectDisposedException"/>; a Predict already running finishes first.
    /// </summary>
    public void Dispose() => _generator.Release();
}
