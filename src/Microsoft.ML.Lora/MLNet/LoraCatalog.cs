using System.Reflection;
using System.Runtime.ExceptionServices;
using Microsoft.ML.Lora.MLNet;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Lora;

/// <summary>LoRA fine-tuning estimators, reached through <c>mlContext.Lora()</c>.</summary>
public sealed class LoraCatalog
{
    private readonly MLContext _env;

    internal LoraCatalog(MLContext env) => _env = env;

    /// <summary>Fine-tunes a LoRA adapter of the causal language model in <see cref="LoraCausalLmOptions.BaseModelFolder"/>.</summary>
    /// <param name="options">The trainer's options.</param>
    public LoraCausalLmTrainer CausalLm(LoraCausalLmOptions options) => new(_env, options);

    /// <summary>Fine-tunes a LoRA adapter of a causal language model with default LoRA, training and generation settings.</summary>
    /// <param name="baseModelFolder">Folder of the Hugging Face base model.</param>
    /// <param name="promptColumnName">Text column with the prompts.</param>
    /// <param name="completionColumnName">Text column with the completions to learn.</param>
    /// <param name="outputColumnName">Text column added with the generated completions.</param>
    /// <param name="seed">Seed of training and sampling.</param>
    public LoraCausalLmTrainer CausalLm(string baseModelFolder,
        string promptColumnName = LoraCausalLmOptions.DefaultPromptColumnName,
        string completionColumnName = LoraCausalLmOptions.DefaultCompletionColumnName,
        string outputColumnName = LoraCausalLmOptions.DefaultOutputColumnName,
        int seed = 0)
        => CausalLm(new LoraCausalLmOptions
        {
            BaseModelFolder = baseModelFolder,
            PromptColumnName = promptColumnName,
            CompletionColumnName = completionColumnName,
            OutputColumnName = outputColumnName,
            Seed = seed,
        });

    /// <summary>
    /// Tokenizes the text column <paramref name="inputColumnName"/> with the tokenizer of the base model in
    /// <paramref name="baseModelFolder"/> into <paramref name="outputColumnName"/>, a variable-length vector of Int32
    /// token ids, for <see cref="LoraCausalLmOptions.PromptTokensColumnName"/> and
    /// <see cref="LoraCausalLmOptions.CompletionTokensColumnName"/>. Saved with the model as a reference to the folder.
    /// </summary>
    /// <param name="baseModelFolder">Folder of the Hugging Face base model (tokenizer.json or vocab.json + merges.txt, config.json).</param>
    /// <param name="outputColumnName">Column added with the token ids.</param>
    /// <param name="inputColumnName">Scalar text column to tokenize. </param>
    /// <param name="addSpecialTokens">
    /// Add what the tokenizer's post-processor adds (e.g. Llama's BOS), as the trainer does for text prompts: true for
    /// prompts, false for completions. Default true.
    /// </param>
    public LoraTokenizeEstimator Tokenize(string baseModelFolder, string outputColumnName, string inputColumnName, bool addSpecialTokens = true)
        => new(_env, baseModelFolder, outputColumnName, inputColumnName, addSpecialTokens);

    /// <summary>
    /// Loads a model saved with <c>mlContext.Model.Save</c>, as <c>mlContext.Model.Load</c> does, with the base model
    /// looked for in <paramref name="baseModelFolder"/> and placed on <paramref name="device"/> instead of the saved
    /// ones. Without an override a base folder saved as a relative path is looked for beside the zip first, then in the
    /// current folder, then at the absolute path of training. The base folder must still have the saved fingerprint
    /// (config, tokenizer files and weights), else the load fails naming the folder. Errors arrive as thrown by the
    /// loader (not wrapped in <see cref="TargetInvocationException"/>).
    /// </summary>
    /// <param name="path">The model zip.</param>
    /// <param name="inputSchema">The input schema saved with the model.</param>
    /// <param name="baseModelFolder">Folder of the base model to use instead of the saved one; null keeps the saved one.</param>
    /// <param name="device">"cpu", "cuda" or "cuda:N" instead of the saved device; null keeps the saved one.</param>
    public ITransformer LoadModel(string path, out DataViewSchema inputSchema, string? baseModelFolder = null, string? device = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        string full = Path.GetFullPath(path);
        if (!File.Exists(full)) throw new FileNotFoundException($"The model file '{full}' does not exist.", full);
        var overrides = new ModelLoadOverrides(Path.GetDirectoryName(full), baseModelFolder, device);
        DataViewSchema schema = null!;
        var model = ModelLoadOverrides.With(overrides, () =>
        {
            try { return _env.Model.Load(full, out schema); }
            catch (TargetInvocationException e) when (e.InnerException is not null)
            {
                Exception inner = e.InnerException;
                while (inner is TargetInvocationException { InnerException: { } next }) inner = next;
                ExceptionDispatchInfo.Capture(inner).Throw();
                throw;
            }
        });
        inputSchema = schema;
        return model;
    }

    /// <summary>
    /// A ready <see cref="LoraCausalLmTransformer"/> from an adapter folder in PEFT's format (adapter_config.json,
    /// adapter_model.safetensors) over the base model of <paramref name="options"/>, without training: generation,
    /// Transform, PredictionEngine and Save work as after Fit. The options give the base folder, device, dtype, columns,
    /// generation settings and seed; their LoRA and training settings are not used (the adapter's config is).
    /// </summary>
    /// <param name="adapterFolder">Folder of the PEFT adapter.</param>
    /// <param name="options">The base model, columns and generation settings.</param>
    public LoraCausalLmTransformer LoadAdapter(string adapterFolder, LoraCausalLmOptions options)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(adapterFolder);
        if (!Directory.Exists(adapterFolder)) throw new DirectoryNotFoundException($"The adapter folder '{Path.GetFullPath(adapterFolder)}' does not exist.");
        var trainer = CausalLm(options);
        return trainer.LoadAdapter(Path.GetFullPath(adapterFolder));
    }

    /// <summary>
    /// Evaluates a fine-tuned model on <paramref name="data"/>, as the Evaluate of ML.NET's other catalogs: the mean
    /// token loss and perplexity of the completion column given the prompt (always), and, when
    /// <paramref name="referenceColumnName"/> is given, exact match and tag-set precision, recall and F1 of the generated
    /// completions against that text column. Formulas: <see cref="LoraCausalLmMetrics"/>.
    /// </summary>
    /// <param name="data">
    /// Rows with the model's input columns and its completion column (<see cref="LoraCausalLmOptions.CompletionColumnName"/>
    /// or <see cref="LoraCausalLmOptions.CompletionTokensColumnName"/>): raw rows (the steps of the pipeline before the
    /// LoRA transformer are applied here), or rows already transformed by <paramref name="model"/>, whose generated
    /// column is then read instead of generated again.
    /// </param>
    /// <param name="model">What Fit or Model.Load returned: a <see cref="LoraCausalLmTransformer"/> or a chain that holds one.</param>
    /// <param name="referenceColumnName">Text column of the expected completions (often the completion column itself); null skips generation and its metrics.</param>
    /// <param name="tagSeparator">What separates the tags of a completion ("tag1, tag2" with the default ",").</param>
    public LoraCausalLmMetrics Evaluate(IDataView data, ITransformer model, string? referenceColumnName = null, string tagSeparator = ",")
        => CausalLmEvaluation.Evaluate(data, model, referenceColumnName, tagSeparator);

    /// <summary>A trainer with the given backend; the seam where tests and other backends plug in.</summary>
    internal LoraCausalLmTrainer CausalLm(LoraCausalLmOptions options, ITextGeneratorFactory factory) => new(_env, options, factory);
}
