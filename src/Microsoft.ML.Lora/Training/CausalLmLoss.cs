using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Training;

/// <summary>transformers' ForCausalLMLoss: logits[:, :-1] against labels[:, 1:], cross-entropy over labels != -100.</summary>
internal static class CausalLmLoss
{
    public const long IgnoreIndex = -100;

    /// <summary>Sum of the token losses (float32) and the number of valid tokens.</summary>
    public static (Tensor Sum, long Count) Sum(Tensor logits, Tensor labels)
    {
        if (labels.device_type != logits.device_type || labels.device_index != logits.device_index)
            throw new InvalidOperationException($"The labels are on {labels.device} but the logits on {logits.device}: build the batch on the model's device (model.Device).");
        using var scope = NewDisposeScope();
        long v = logits.shape[^1];
        // As transformers: pad the labels on the right and shift them, instead of copying logits[:, :-1].
        var flatLogits = logits.dtype == ScalarType.Float32 ? logits.reshape(-1, v) : logits.reshape(-1, v).to(ScalarType.Float32);
        var shiftLabels = nn.functional.pad(labels, [0, 1], value: IgnoreIndex)[.., 1..].reshape(-1);
        long count = shiftLabels.ne(IgnoreIndex).sum().item<long>();
        var sum = nn.functional.cross_entropy(flatLogits, shiftLabels, ignore_index: IgnoreIndex, reduction: nn.Reduction.Sum);
        return (sum.MoveToOuterDisposeScope(), count);
    }

    /// <summary>Mean over valid tokens (NaN when there is none, as torch).</summary>
    public static Tensor Mean(Tensor logits, Tensor labels)
    {
        var (sum, count) = Sum(logits, labels);
        using (sum) return sum.div(count);
    }
}
