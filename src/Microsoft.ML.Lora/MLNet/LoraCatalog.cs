using Microsoft.ML.Lora.MLNet;
using Microsoft.ML.Runtime;

namespace Microsoft.ML.Lora;

/// <summary>LoRA fine-tuning estimators, reached through <c>mlContext.Lora()</c>.</summary>
public sealed class LoraCatalog
{
    private readonly IHostEnvironment _env;

    internal LoraCatalog(IHostEnvironment env) => _env = env;

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

    /// <summary>A trainer with the given backend; the seam where tests and other backends plug in.</summary>
    internal LoraCausalLmTrainer CausalLm(LoraCausalLmOptions options, ITextGeneratorFactory factory) => new(_env, options, factory);
}
