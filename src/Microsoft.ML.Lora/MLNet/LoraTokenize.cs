using Microsoft.ML.Data;
using Microsoft.ML.Lora.MLNet;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Lora;

/// <summary>
/// Tokenizes a text column with the tokenizer of a Hugging Face base model folder (tokenizer.json, or vocab.json +
/// merges.txt) into a column of token ids: a variable-length vector of <see cref="int"/> (Int32, the id type of the
/// tokenizer and of TorchSharp; ids are not ML.NET keys). Feed it to <see cref="LoraCausalLmOptions.PromptTokensColumnName"/>
/// and <see cref="LoraCausalLmOptions.CompletionTokensColumnName"/>. Create it with <c>mlContext.Lora().Tokenize(...)</c>.
/// </summary>
public sealed class LoraTokenizeEstimator : IEstimator<LoraTokenizeTransformer>
{
    private readonly IHostEnvironment _env;
    private readonly string _baseModelFolder;
    private readonly string _outputColumnName;
    private readonly string _inputColumnName;
    private readonly bool _addSpecialTokens;

    internal LoraTokenizeEstimator(IHostEnvironment env, string baseModelFolder, string outputColumnName, string inputColumnName, bool addSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentException.ThrowIfNullOrWhiteSpace(baseModelFolder);
        ArgumentException.ThrowIfNullOrEmpty(outputColumnName);
        ArgumentException.ThrowIfNullOrEmpty(inputColumnName);
        _env = env;
        _baseModelFolder = baseModelFolder;
        _outputColumnName = outputColumnName;
        _inputColumnName = inputColumnName;
        _addSpecialTokens = addSpecialTokens;
    }

    /// <summary>Checks that the input column is scalar text and returns the schema with the token id column added.</summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        SchemaChecks.TextColumn(inputSchema, _inputColumnName, "input", nameof(inputSchema));
        var columns = inputSchema.Where(c => c.Name != _outputColumnName).ToList();
        columns.Add(SchemaChecks.TokensColumnShape(_outputColumnName));
        return new SchemaShape(columns);
    }

    /// <summary>Loads the tokenizer of the base model folder; nothing is learned from <paramref name="input"/>.</summary>
    public LoraTokenizeTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        SchemaChecks.TextColumn(input.Schema, _inputColumnName, "input", nameof(input));
        return new LoraTokenizeTransformer(_env, BaseModelReference.Of(_baseModelFolder), _outputColumnName, _inputColumnName, _addSpecialTokens);
    }
}

/// <summary>
/// Adds a column of token ids (variable-length vector of Int32) of a text column, encoded with the base model's
/// tokenizer when the column is read. Saved with <c>mlContext.Model.Save</c> as a reference to the base model folder
/// (path and fingerprint, as <see cref="LoraCausalLmTransformer"/>) and the column settings.
/// </summary>
public sealed class LoraTokenizeTransformer : ITransformer
{
    internal LoraTokenizeTransformer(IHostEnvironment env, BaseModelReference baseModel, string outputColumnName, string inputColumnName, bool addSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(env);
        BaseModel = baseModel;
        OutputColumnName = outputColumnName;
        InputColumnName = inputColumnName;
        AddSpecialTokens = addSpecialTokens;
        Tokenizer = BackendTokenizer.Load(baseModel.Folder);
    }

    /// <summary>Text column that is tokenized.</summary>
    public string InputColumnName { get; }

    /// <summary>Token id column added (variable-length vector of Int32).</summary>
    public string OutputColumnName { get; }

    /// <summary>Whether the ids include what the tokenizer's post-processor adds (e.g. Llama's BOS): true for prompts, false for completions.</summary>
    public bool AddSpecialTokens { get; }

    /// <summary>Folder of the base model whose tokenizer is used.</summary>
    public string BaseModelFolder => BaseModel.Folder;

    internal BaseModelReference BaseModel { get; }

    internal IBackendTokenizer Tokenizer { get; }

    /// <inheritdoc/>
    bool ITransformer.IsRowToRowMapper => true;

    /// <summary>
    /// The schema with the token id column added. When <paramref name="inputSchema"/> has no column
    /// <see cref="InputColumnName"/> it is returned unchanged: a completion tokenized for Fit is not needed to score rows
    /// (a step after this one that reads the ids names the missing column). A column of another type than text throws.
    /// </summary>
    public DataViewSchema GetOutputSchema(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        return Column(inputSchema, nameof(inputSchema))?.OutputSchema(inputSchema) ?? inputSchema;
    }

    /// <summary>Adds the token id column to <paramref name="input"/> (ids are computed when it is read); <paramref name="input"/> itself when it lacks the text column.</summary>
    public IDataView Transform(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        return Column(input.Schema, nameof(input)) is { } column ? new TokenizedDataView(input, column) : input;
    }

    /// <inheritdoc/>
    public IRowToRowMapper GetRowToRowMapper(DataViewSchema inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        return Column(inputSchema, nameof(inputSchema)) is { } column ? new TokenizedRowMapper(inputSchema, column) : new IdentityRowMapper(inputSchema);
    }

    /// <inheritdoc/>
    void ICanSaveModel.Save(ModelSaveContext ctx) => LoraTokenizeModelFormat.Save(ctx, this);

    /// <summary>The column to add, or null when <paramref name="schema"/> lacks the input column (prediction without a completion).</summary>
    private TokenizedColumn? Column(DataViewSchema schema, string paramName) =>
        schema.GetColumnOrNull(InputColumnName) is null ? null
            : new(Tokenizer, SchemaChecks.TextColumn(schema, InputColumnName, "input", paramName), OutputColumnName, AddSpecialTokens);
}
