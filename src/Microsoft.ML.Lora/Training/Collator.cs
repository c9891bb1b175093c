using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Training;

/// <summary>
/// A padded batch: input ids, attention mask and labels, each [batch, time] int64 on the model's device;
/// <paramref name="Tokens"/> non-padding tokens, <paramref name="LabelTokens"/> labels that count in the loss (after the shift), when known without reading <paramref name="Labels"/>.
/// </summary>
internal sealed record Batch(Tensor InputIds, Tensor AttentionMask, Tensor Labels, long Tokens, long? LabelTokens = null) : IDisposable
{
    public void Dispose() { InputIds.Dispose(); AttentionMask.Dispose(); Labels.Dispose(); }

    /// <summary><see cref="LabelTokens"/>, or counted from <see cref="Labels"/> (a device sync) when not given.</summary>
    public long CountLabelTokens()
    {
        if (LabelTokens is long n) return n;
        using var shifted = Labels[.., 1..];
        using var valid = shifted.ne(CausalLmLoss.IgnoreIndex);
        using var sum = valid.sum();
        return sum.item<long>();
    }
}

/// <summary>
/// Builds causal-LM examples from (prompt, completion): ids = prompt + completion (+ EOS), labels = -100 on the prompt,
/// right-padded to the longest example of the batch (pad label -100, attention mask 0). The model's vocabulary size
/// <c>vocabSize</c> (0: not checked) bounds the ids: an example with one outside it is refused naming the example.
/// </summary>
internal sealed class Collator(int padId, int? eosId, bool appendEos, bool trainOnPrompt, int maxLength, OverlengthPolicy overlength, int vocabSize = 0,
    string limit = "model context")
{
    public int Truncated { get; private set; }

    /// <summary>
    /// The collator of training and evaluation: pad with the model's pad (else EOS) token, cut to MaxSequenceLength and
    /// to the model's context less the <paramref name="adapterPositions"/> an adapter puts before the input
    /// (<see cref="Peft.IPeftTuner.ContextPositions"/>: prompt learning's virtual tokens).
    /// </summary>
    public static Collator For(Models.ModelConfig cfg, TrainingOptions o, int adapterPositions = 0)
    {
        int maxLen = o.MaxSequenceLength > 0 ? o.MaxSequenceLength : 0;
        string limit = "MaxSequenceLength";
        if (cfg.MaxPositionEmbeddings > 0 && (maxLen == 0 || cfg.MaxPositionEmbeddings - adapterPositions < maxLen))
        {
            maxLen = cfg.MaxPositionEmbeddings - adapterPositions;
            limit = adapterPositions == 0 ? "model context"
                : $"model context of {cfg.MaxPositionEmbeddings} positions less the adapter's {adapterPositions} virtual tokens";
            if (maxLen < 1)
                throw new ArgumentException($"The adapter's {adapterPositions} virtual tokens fill the model's context of {cfg.MaxPositionEmbeddings} positions (max_position_embeddings); use fewer virtual tokens.");
        }
        return new Collator(cfg.PadTokenId ?? cfg.EosTokenId ?? 0, cfg.EosTokenId, o.AppendEos, o.TrainOnPrompt, maxLen, o.Overlength, cfg.VocabSize, limit);
    }

    public (int[] Ids, long[] Labels) Encode(TrainingExample e, int index)
    {
        if (e.Prompt.Count + e.Completion.Count == 0) throw new ArgumentException($"Training example {index} is empty.");
        CheckIds(e.Prompt, index, "prompt");
        CheckIds(e.Completion, index, "completion");
        var ids = new List<int>(e.Prompt.Count + e.Completion.Count + 1);
        ids.AddRange(e.Prompt);
        ids.AddRange(e.Completion);
        if (appendEos)
            ids.Add(eosId ?? throw new InvalidOperationException("AppendEos is set but the model config has no eos_token_id."));
        var labels = new long[ids.Count];
        for (int i = 0; i < ids.Count; i++) labels[i] = !trainOnPrompt && i < e.Prompt.Count ? CausalLmLoss.IgnoreIndex : ids[i];
        if (maxLength > 0 && ids.Count > maxLength)
        {
            if (overlength == OverlengthPolicy.Error)
                throw new ArgumentException($"Training example {index} has {ids.Count} tokens; the limit is {maxLength} ({limit}). Shorten it or set Overlength = Truncate.");
            Truncated++;
            return (ids.Take(maxLength).ToArray(), labels.Take(maxLength).ToArray());
        }
        return (ids.ToArray(), labels);
    }

    private void CheckIds(IReadOnlyList<int> ids, int index, string part)
    {
        if (vocabSize <= 0) return;
        for (int i = 0; i < ids.Count; i++)
            if ((uint)ids[i] >= (uint)vocabSize)
                throw new ArgumentOutOfRangeException(null,
                    $"Training example {index} has token id {ids[i]} at position {i} of its {part}, outside the model's vocabulary (0 to {vocabSize - 1}, vocab_size in config.json); encode with the model's own tokenizer.");
    }

    /// <summary>Pads <paramref name="examples"/> into one batch, built directly on <paramref name="device"/> (default: the CPU).</summary>
    public Batch Collate(IReadOnlyList<(int[] Ids, long[] Labels)> examples, Device? device = null)
    {
        int b = examples.Count, t = examples.Max(x => x.Ids.Length);
        var ids = new long[b * t]; var mask = new long[b * t]; var labels = new long[b * t];
        long tokens = 0, labelTokens = 0;
        for (int i = 0; i < b; i++)
        {
            var (x, y) = examples[i];
            for (int j = 0; j < t; j++)
            {
                bool real = j < x.Length;
                ids[i * t + j] = real ? x[j] : padId;
                mask[i * t + j] = real ? 1 : 0;
                labels[i * t + j] = real ? y[j] : CausalLmLoss.IgnoreIndex;
            }
            tokens += x.Length;
            for (int j = 1; j < t; j++) if (labels[i * t + j] != CausalLmLoss.IgnoreIndex) labelTokens++;
        }
        return new Batch(tensor(ids, [b, t], device: device), tensor(mask, [b, t], device: device), tensor(labels, [b, t], device: device), tokens, labelTokens);
    }

    /// <summary>Seeded permutation of 0..n-1 for an epoch (System.Random with seed + epoch: reproducible on resume).</summary>
    public static int[] Order(int n, int seed, int epoch, bool shuffle)
    {
        var order = Enumerable.Range(0, n).ToArray();
        if (shuffle) new Random(unchecked(seed * 7919 + epoch)).Shuffle(order);
        return order;
    }
}
