using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// Checks that index inputs (token ids, position ids) are inside the table they index before the lookup, so a bad id
/// is the library's <see cref="ArgumentOutOfRangeException"/> naming the input, the value, where it is and the bound,
/// instead of libtorch's "index out of bounds" with a C++ stack. Costs one min and one max per call.
/// </summary>
internal static class InputBounds
{
    /// <summary>Throws when a value of <paramref name="ids"/> is outside [0, <paramref name="limit"/>).</summary>
    /// <param name="ids">The indices, any shape and integer dtype.</param>
    /// <param name="limit">The size of the table.</param>
    /// <param name="name">The input's name in messages (input_ids, position_ids).</param>
    /// <param name="bound">What the table is and where its size comes from, e.g. "the vocabulary has 1000 ids (vocab_size in config.json)".</param>
    public static void Check(Tensor ids, long limit, string name, string bound)
    {
        if (ids.device_type == DeviceType.META || ids.numel() == 0) return;
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        long min = ids.min().to_type(ScalarType.Int64).item<long>(), max = ids.max().to_type(ScalarType.Int64).item<long>();
        if (min >= 0 && max < limit) return;
        long bad = min < 0 ? min : max;
        var at = ids.eq(bad).nonzero()[0].cpu().data<long>().ToArray();
        throw new ArgumentOutOfRangeException(null,
            $"{name} holds {bad} at [{string.Join(", ", at)}] (shape [{string.Join(", ", ids.shape)}]), outside 0 to {limit - 1}: {bound}.");
    }
}
