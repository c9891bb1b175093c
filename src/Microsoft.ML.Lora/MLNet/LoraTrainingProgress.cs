namespace Microsoft.ML.Lora;

/// <summary>
/// A progress report of <see cref="LoraCausalLmTrainer"/>, sent to <see cref="LoraCausalLmOptions.Progress"/> every
/// <see cref="LoraTrainingOptions.LoggingSteps"/> optimizer steps, at each validation and at the last step (the same
/// line goes to the MLContext log). Reported on the training thread.
/// </summary>
/// <param name="Step">Optimizer steps done (counting those before a resumed checkpoint).</param>
/// <param name="TotalSteps">Optimizer steps planned.</param>
/// <param name="Epoch">Passes over the training data so far, fractional.</param>
/// <param name="Loss">Mean training loss (per completion token) of the steps since the previous report.</param>
/// <param name="LearningRate">Learning rate of the last step.</param>
/// <param name="TokensPerSecond">Input tokens (not padding) per second since this Fit started.</param>
/// <param name="Elapsed">Time since this Fit started training.</param>
/// <param name="Eta">Estimated time to the last step.</param>
/// <param name="ValidationLoss">Mean loss per completion token on the validation data, when it was evaluated at this step.</param>
public sealed record LoraTrainingProgress(int Step, int TotalSteps, double Epoch, double Loss, double LearningRate,
    double TokensPerSecond, TimeSpan Elapsed, TimeSpan Eta, double? ValidationLoss);
