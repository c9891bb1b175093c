using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>
/// A linear projection whose weight LoRA can wrap, merge into and read: <see cref="Linear"/> (weight [out, in], as
/// torch.nn.Linear) or <see cref="Conv1D"/> (weight [in, out], GPT-2's layout; PEFT's <c>fan_in_fan_out</c>).
/// </summary>
internal interface ILinear
{
    long InFeatures { get; }
    long OutFeatures { get; }
    TorchSharp.Modules.Parameter weight { get; }
    TorchSharp.Modules.Parameter? bias { get; }

    /// <summary>True when <see cref="weight"/> is stored [in, out].</summary>
    bool FanInFanOut { get; }

    /// <summary>
    /// False (default): multiply in the weight's dtype, as torch does. True: over a bfloat16 weight, multiply in float32
    /// arithmetic and return float32 (<see cref="Precision.Float32Linear"/>); no effect on float32 weights.
    /// </summary>
    bool Float32Arithmetic { get; set; }
}
