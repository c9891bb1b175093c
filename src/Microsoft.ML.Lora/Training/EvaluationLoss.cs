using Microsoft.ML.Lora.Peft;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Training;

/// <summary>
/// The loss of examples under a model without training it: the summed cross-entropy of every label token (the
/// completion and EOS; the prompt is masked with -100, as in training) and how many there are. The validation loss of
/// <see cref="Trainer"/> and the ML.NET Evaluate share it, so both follow the training loss's formula.
/// </summary>
internal static class EvaluationLoss
{
    /// <summary>
    /// Sum of the token losses and the number of label tokens over <paramref name="examples"/>, encoded as
    /// <see cref="Trainer.Train"/> encodes them (<see cref="Collator.For"/>: EOS appended when
    /// <see cref="TrainingOptions.AppendEos"/>, cut to the length), in batches of <see cref="TrainingOptions.BatchSize"/>.
    /// The model's train/eval mode is left as it is.
    /// </summary>
    public static (double Sum, long Count) Sum(PeftModel model, IReadOnlyList<TrainingExample> examples, TrainingOptions options)
    {
        var collator = Collator.For(model.Model.Config, options, model.Tuner.ContextPositions);
        var encoded = examples.Select((e, i) => collator.Encode(e, i)).ToList();
        return Sum(model, encoded, collator, options.BatchSize);
    }

    /// <summary>Sum of the token losses and the number of label tokens of encoded examples, <paramref name="batchSize"/> at a time, without gradients.</summary>
    public static (double Sum, long Count) Sum(PeftModel model, IReadOnlyList<(int[] Ids, long[] Labels)> examples, Collator collator, int batchSize)
    {
        double sum = 0; long count = 0;
        using (no_grad())
            for (int i = 0; i < examples.Count; i += batchSize)
            {
                using var scope = NewDisposeScope();
                using var b = collator.Collate(examples.Skip(i).Take(batchSize).ToList(), model.Model.Device);
                var (s, c) = model.LossSum(b.InputIds, b.AttentionMask, b.Labels);
                sum += s.item<float>(); count += c;
            }
        return (sum, count);
    }
}
