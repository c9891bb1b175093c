using Microsoft.ML.Lora.Models.Layers;
using TorchSharp.Modules;
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

    /// <summary>
    /// Float32 logits computed at once by <see cref="ChunkedSum"/>: 16 Mi values (64 MiB), 66 positions of BLOOM's
    /// 250,880-token vocabulary, 333 of GPT-2's. Small enough that a chunk's logits, their log-softmax and gradient
    /// are noise beside the weights; large enough that the head's matrix product stays efficient.
    /// </summary>
    internal const long ChunkLogits = 16L << 20;

    /// <summary>
    /// <see cref="Sum"/> computed from the final hidden states <paramref name="hidden"/> (batch, seq, hidden) and the
    /// output layer <paramref name="head"/> instead of from the logits, with the same value: the positions whose
    /// shifted label is -100 never reach the head, and the others go through it <paramref name="rowsPerChunk"/> at a
    /// time (default: <see cref="ChunkLogits"/> / <paramref name="vocab"/>). With gradients on, each chunk is
    /// checkpointed (<see cref="GradientCheckpoint"/>): its forward keeps only its hidden rows, and backward computes
    /// its logits again, one chunk at a time, so the (tokens, vocab) float32 logits and their gradient never exist
    /// whole. <paramref name="trainable"/>: the parameters requiring grad the head may use (its LoRA, a trainable
    /// embedding); their gradients flow through the chunks.
    /// </summary>
    public static (Tensor Sum, long Count) ChunkedSum(Tensor hidden, Tensor labels, Func<Tensor, Tensor> head, long vocab,
        IEnumerable<Parameter> trainable, long? rowsPerChunk = null)
    {
        if (labels.device_type != hidden.device_type || labels.device_index != hidden.device_index)
            throw new InvalidOperationException($"The labels are on {labels.device} but the hidden states on {hidden.device}: build the batch on the model's device (model.Device).");
        // No dispose scope of its own: the chunks' targets must live until backward recomputes the chunks, so
        // everything here belongs to the caller's scope (the trainer's, per micro-batch, around forward and backward).
        var shiftLabels = nn.functional.pad(labels, [0, 1], value: IgnoreIndex)[.., 1..].reshape(-1);
        var keep = shiftLabels.ne(IgnoreIndex).nonzero().reshape(-1); // flat positions with a label
        long count = keep.shape[0];
        if (count == 0) return (zeros([], ScalarType.Float32, hidden.device), 0);
        var rows = hidden.reshape(-1, hidden.shape[^1]).index_select(0, keep); // (count, hidden)
        var targets = shiftLabels.index_select(0, keep);                         // (count)
        long step = Math.Max(1, rowsPerChunk ?? ChunkLogits / Math.Max(1, vocab));
        bool checkpoint = is_grad_enabled();
        var parameters = checkpoint ? trainable.ToList() : [];
        Tensor? sum = null;
        for (long start = 0; start < count; start += step)
        {
            long n = Math.Min(step, count - start);
            var y = targets.narrow(0, start, n);
            Tensor ChunkLoss(Tensor x)
            {
                // The chunk's logits are freed here, not at the end of the caller's scope: else every chunk's would be
                // alive at once, as many bytes as the full logits (autograd keeps what backward needs on its own).
                using var chunkScope = NewDisposeScope();
                return nn.functional.cross_entropy(head(x), y, reduction: nn.Reduction.Sum).MoveToOuterDisposeScope();
            }
            var chunk = rows.narrow(0, start, n);
            var part = checkpoint ? GradientCheckpoint.Apply(ChunkLoss, chunk, parameters, isLayer: false) : ChunkLoss(chunk);
            sum = sum is null ? part : sum + part;
        }
        return (sum!, count);
    }

    /// <summary>Mean over valid tokens (NaN when there is none, as torch).</summary>
    public static Tensor Mean(Tensor logits, Tensor labels)
    {
        var (sum, count) = Sum(logits, labels);
        using (sum) return sum.div(count);
    }
}
