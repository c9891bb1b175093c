namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// Placeholder for the TorchSharp backend: the LoRA model, trainer and generator (branches models, lora, tokenizers)
/// plug in here by implementing <see cref="ITextGeneratorFactory"/> on top of them.
/// </summary>
internal sealed class TorchSharpTextGeneratorFactory : ITextGeneratorFactory
{
    public ITextGenerator Train(LoraCausalLmOptions options, IReadOnlyList<PromptCompletion> examples, Action<string> log) =>
        throw NotYet();

    public ITextGenerator Load(LoraCausalLmOptions options, string adapterFolder) => throw NotYet();

    private static NotSupportedException NotYet() =>
        new("The TorchSharp LoRA backend is not wired into the ML.NET layer yet.");
}
