using Microsoft.ML.Lora.Peft;

namespace Microsoft.ML.Lora.Tests;

/// <summary>Short access, in tests, to the LoRA or IA3 tuner of a <see cref="PeftModel"/> holding LoRA adapters.</summary>
internal static class PeftModelExtensions
{
    extension(PeftModel peft)
    {
        /// <summary>The LoRA layers by module path.</summary>
        public IReadOnlyDictionary<string, LoraLinear> Layers => ((LoraModel)peft.Tuner).Layers;
        /// <summary>The LoRA embedding layers by module path.</summary>
        public IReadOnlyDictionary<string, LoraEmbedding> Embeddings => ((LoraModel)peft.Tuner).Embeddings;
        /// <summary>The IA3 layers by module path.</summary>
        public IReadOnlyDictionary<string, IA3Linear> IA3Layers => ((IA3Model)peft.Tuner).Layers;
        /// <summary>The active adapter's LoRA config.</summary>
        public LoraConfig Config => (LoraConfig)peft.PeftConfig;
    }
}
