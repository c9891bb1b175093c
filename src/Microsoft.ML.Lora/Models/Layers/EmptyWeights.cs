using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>
/// accelerate's <c>init_empty_weights</c>: modules built inside <see cref="Create{T}"/> get their parameters on the
/// meta device (shapes and dtypes, no memory, no initialisation), so that a loader can create each parameter once, from
/// the checkpoint, in its target dtype and device. The layers of this library read <see cref="Device"/> in their
/// constructors; the switch is per thread, so other threads keep building ordinary modules meanwhile.
/// </summary>
internal static class EmptyWeights
{
    [ThreadStatic] private static bool _active;

    /// <summary>The meta device while a <see cref="Create{T}"/> runs on this thread, else null (the default device).</summary>
    public static Device? Device => _active ? Meta : null;

    /// <summary>The meta device.</summary>
    public static readonly Device Meta = torch.device("meta");

    /// <summary>Runs <paramref name="build"/> with <see cref="Device"/> set to the meta device.</summary>
    public static T Create<T>(Func<T> build)
    {
        bool outer = _active;
        _active = true;
        try { return build(); }
        finally { _active = outer; }
    }
}
