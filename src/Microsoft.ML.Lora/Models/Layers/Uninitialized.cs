using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>
/// TorchSharp's <c>nn.Linear</c> without its initialisation: torch's constructor draws it from libtorch's global
/// generator, which this library never touches (every thread shares it; see Training/Rng.cs). Built on the meta
/// device, then given uninitialised storage on <c>device</c>; the caller fills every parameter. (Embeddings are this
/// library's <see cref="Embedding"/>, whose default initialisation draws from <see cref="Training.Rng.Unseeded"/>.)
/// </summary>
internal static class Uninitialized
{
    /// <summary>A torch.nn.Linear [out, in] (and bias [out]) whose values are left for the caller to set.</summary>
    public static TorchSharp.Modules.Linear Linear(long inFeatures, long outFeatures, bool hasBias, Device? device = null, ScalarType dtype = ScalarType.Float32)
    {
        var layer = nn.Linear(inFeatures, outFeatures, hasBias, device: EmptyWeights.Meta, dtype: dtype);
        layer.weight = new Parameter(empty(outFeatures, inFeatures, dtype: dtype, device: device));
        if (hasBias) layer.bias = new Parameter(empty(outFeatures, dtype: dtype, device: device));
        return layer;
    }
}
