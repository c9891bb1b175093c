using Microsoft.ML.Data;
using Microsoft.ML.Lora.MLNet;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Lora;

/// <summary>
/// Fine-tunes a LoRA adapter of a Hugging Face causal language model on the prompt and completion text columns;
/// <see cref="Fit"/> returns a <see cref="LoraCausalLmTransformer"/> that generates completions.
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
        _factory = factory ?? TextGeneratorFactories.Default;
    }

    /// <summary>
    /// Checks that <paramref name="inputSchema"/> has the prompt and completion text columns and returns it with the
    /// generated text column added.
    /// </summary>
    public SchemaShape GetOutputSchema(SchemaShape inputSchema)
    {
        ArgumentNullException.ThrowIfNull(inputSchema);
        SchemaChecks.TextColumn(inputSchema, _options.PromptColumnName, "prompt", nameof(inputSchema));
        SchemaChecks.TextColumn(inputSchema, _options.CompletionColumnName, "completion", nameof(inputSchema));
        var columns = inputSchema.Where(c => c.Name != _options.OutputColumnName).ToList();
        columns.Add(SchemaChecks.TextColumnShape(_options.OutputColumnName));
        return new SchemaShape(columns);
    }

    /// <summary>Reads every prompt and completion of <paramref name="input"/> and fine-tunes the adapter on them.</summary>
    public LoraCausalLmTransformer Fit(IDataView input)
    {
        ArgumentNullException.ThrowIfNull(input);
        int prompt = SchemaChecks.TextColumn(input.Schema, _options.PromptColumnName, "prompt", nameof(input));
        int completion = SchemaChecks.TextColumn(input.Schema, _options.CompletionColumnName, "completion", nameof(input));
        var baseModel = BaseModelReference.Of(_options.BaseModelFolder);
        var options = _options.Clone();
        options.BaseModelFolder = baseModel.Folder;

        var examples = new List<PromptCompletion>();
        using (var cursor = input.GetRowCursor(new[] { input.Schema[prompt], input.Schema[completion] }))
        {
            var getPrompt = cursor.GetGetter<ReadOnlyMemory<char>>(input.Schema[prompt]);
            var getCompletion = cursor.GetGetter<ReadOnlyMemory<char>>(input.Schema[completion]);
            ReadOnlyMemory<char> p = default, c = default;
            while (cursor.MoveNext())
            {
                getPrompt(ref p);
                getCompletion(ref c);
                examples.Add(new PromptCompletion(p.ToString(), c.ToString()));
            }
        }
        if (examples.Count == 0)
            throw new InvalidOperationException("The training data has no rows.");

        ITextGenerator generator;
        using (var ch = _host.Start("Training"))
        {
            ch.Info(MessageSensitivity.None, $"Fine-tuning a LoRA adapter of '{baseModel.Folder}' on {examples.Count} examples.");
            generator = _factory.Train(options, examples, message => ch.Info(MessageSensitivity.None, message));
        }
        return new LoraCausalLmTransformer(_host, options, baseModel, _factory, generator);
    }

    private static void Validate(LoraCausalLmOptions options)
    {
        Require(!string.IsNullOrWhiteSpace(options.BaseModelFolder), nameof(options.BaseModelFolder), "must name the base model folder");
        Require(!string.IsNullOrEmpty(options.PromptColumnName), nameof(options.PromptColumnName), "must not be empty");
        Require(!string.IsNullOrEmpty(options.CompletionColumnName), nameof(options.CompletionColumnName), "must not be empty");
        Require(!string.IsNullOrEmpty(options.OutputColumnName), nameof(options.OutputColumnName), "must not be empty");
        Require(options.Lora is { Rank: > 0 }, "Lora.Rank", "must be positive");
        Require(options.Training is { Epochs: > 0, BatchSize: > 0, MaxSequenceLength: > 0 }, "Training", "Epochs, BatchSize and MaxSequenceLength must be positive");
        Require(options.Generation is { MaxNewTokens: > 0, BatchSize: > 0 }, "Generation", "MaxNewTokens and BatchSize must be positive");
    }

    private static void Require(bool ok, string name, string what)
    {
        if (!ok) throw new ArgumentOutOfRangeException(name, $"LoraCausalLmOptions.{name} {what}.");
    }
}
