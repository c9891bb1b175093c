using Microsoft.ML.Lora.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>PEFT's <c>prepare_model_for_kbit_training</c>, as the seed's 8-bit BLOOM job applies it.</summary>
internal static class KbitTraining
{
    /// <summary>
    /// Readies a (quantized) base for LoRA training: every parameter frozen; the norms' parameters in float32 (the seed's
    /// "param.ndim == 1" cast, for layer and RMS norms only: PEFT casts every half-precision parameter, which for
    /// BLOOM-7b1's embedding alone would add 2 GiB, and a float32 linear bias over bfloat16 weights would not multiply);
    /// with <paramref name="useGradientCheckpointing"/>, checkpointing on and the input embeddings' output requiring
    /// grad (transformers' enable_input_require_grads). Logits are float32 in every model of this library (the seed's
    /// CastOutputToFloat).
    /// </summary>
    public static CausalLm PrepareModelForKbitTraining(CausalLm model, bool useGradientCheckpointing = true)
    {
        ModelFactory.Freeze(model);
        using (no_grad())
            foreach (var (_, norm) in model.named_modules())
            {
                if (norm is not (Models.Layers.LayerNorm or Models.Layers.RmsNorm or TorchSharp.Modules.LayerNorm)) continue;
                foreach (var (name, p) in norm.named_parameters(recurse: false).ToList())
                    if (p.dtype is ScalarType.BFloat16 or ScalarType.Float16)
                        ModuleParameters.Replace(norm, name, new Parameter(p.to(ScalarType.Float32), requires_grad: false));
            }
        if (useGradientCheckpointing)
        {
            model.EnableInputRequireGrads();
            model.GradientCheckpointingEnable();
        }
        return model;
    }
}
