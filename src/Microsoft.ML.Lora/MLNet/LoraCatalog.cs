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

    /// <summary>A trainer with the given backend; the seam where tests and other backends plug in.</summary>
    internal LoraCausalLmTrainer CausalLm(LoraCausalLmOptions options, ITextGeneratorFactory factory) => new(_env, options, factory);
}
