namespace Microsoft.ML.Lora.Models;

/// <summary>
/// The registry of supported architectures: one line per <c>model_type</c>. The loader, LoRA's default targets, the
/// parameter count and <see cref="TinyBaseModel"/> look a model type up here; nothing else branches on model-type
/// strings. To add a family, write its file (config mapping, modules, description) and add its line below
/// (docs/models.md, "Adding an architecture").
/// </summary>
internal static class Architectures
{
    /// <summary>Every supported architecture.</summary>
    public static IReadOnlyList<Architecture> All { get; } =
    [
        BloomFamily.Bloom,
        Gemma2Family.Gemma2,
        Gpt2Family.Gpt2,
        LlamaFamily.Llama,
        LlamaFamily.Mistral,
        Phi3Family.Phi3,
        LlamaFamily.Qwen2,
        Qwen3Family.Qwen3,
    ];

    private static readonly Dictionary<string, Architecture> ByType = All.ToDictionary(a => a.ModelType, StringComparer.Ordinal);

    /// <summary>The supported model types, sorted.</summary>
    public static IReadOnlyList<string> ModelTypes { get; } = [.. All.Select(a => a.ModelType).Order(StringComparer.Ordinal)];

    /// <summary>The description of <paramref name="modelType"/>, or null when it is not supported.</summary>
    public static Architecture? Find(string modelType) => ByType.GetValueOrDefault(modelType);

    /// <summary>The description of <paramref name="modelType"/>; throws <see cref="NotSupportedException"/> listing the supported types.</summary>
    public static Architecture For(string modelType) => Find(modelType)
        ?? throw new NotSupportedException($"model_type '{modelType}' is not supported; supported: {string.Join(", ", ModelTypes)}.");
}
