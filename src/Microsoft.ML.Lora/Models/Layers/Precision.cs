using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>
/// Mixed precision as transformers runs bfloat16/float16 models, a bit stricter: weights stay in their dtype and the
/// linear layers compute in it, while the residual stream, norms, rotary angles, attention and logits are float32.
/// For float32 models every cast here is a no-op.
/// </summary>
internal static class Precision
{
    /// <summary>The dtype of the residual stream and of everything precision-sensitive.</summary>
    public const ScalarType Compute = ScalarType.Float32;

    /// <summary><paramref name="x"/> itself when it already has <paramref name="dtype"/>, else a converted copy.</summary>
    public static Tensor As(this Tensor x, ScalarType dtype) => x.dtype == dtype ? x : x.to_type(dtype);
}
