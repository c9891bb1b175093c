namespace Microsoft.ML.Lora.Training;

/// <summary>transformers' lr_lambda functions (optimization.py): the factor applied to the peak learning rate at a step.</summary>
internal static class LrSchedule
{
    public static int WarmupSteps(TrainingOptions o, int totalSteps) =>
        o.WarmupSteps > 0 ? o.WarmupSteps : (int)Math.Ceiling(o.WarmupRatio * totalSteps);

    /// <summary>Multiplier at <paramref name="step"/> (0 = the first optimizer step).</summary>
    public static double Factor(LrSchedulerType type, int step, int warmup, int total)
    {
        if (step < warmup) return (double)step / Math.Max(1, warmup);
        switch (type)
        {
            case LrSchedulerType.Constant: return 1.0;
            case LrSchedulerType.Linear:
                return Math.Max(0.0, (double)(total - step) / Math.Max(1, total - warmup));
            case LrSchedulerType.Cosine:
                double progress = (double)(step - warmup) / Math.Max(1, total - warmup);
                return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * 0.5 * 2.0 * progress)));
            default: throw new ArgumentOutOfRangeException(nameof(type));
        }
    }
}
