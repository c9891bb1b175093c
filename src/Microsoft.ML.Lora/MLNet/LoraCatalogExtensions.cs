using Microsoft.ML.Lora;

namespace Microsoft.ML;

/// <summary>Adds <see cref="Lora"/> to <see cref="MLContext"/>.</summary>
public static class LoraCatalogExtensions
{
    /// <summary>LoRA fine-tuning of causal language models: <c>mlContext.Lora().CausalLm(options)</c>.</summary>
    public static LoraCatalog Lora(this MLContext mlContext)
    {
        ArgumentNullException.ThrowIfNull(mlContext);
        return new LoraCatalog(mlContext);
    }
}
