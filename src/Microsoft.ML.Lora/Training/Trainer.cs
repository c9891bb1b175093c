using System.Diagnostics;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Peft;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Training;

/// <summary>
/// Trains the active adapter of a <see cref="PeftModel"/> (any PEFT method) as transformers' <c>Trainer</c> does:
/// causal-LM loss, AdamW, warmup + schedule, gradient accumulation, gradient clipping, eval loss, checkpoints
/// (<c>checkpoint-N</c> folders) and resume. Dispose it to free the optimizer state.
/// </summary>
public sealed class Trainer : IDisposable
{
    internal const string OptimizerFile = "optimizer.pt";
    /// <summary>The checkpoint file of <see cref="IPeftTuner.TrainingState"/> (a prompt encoder's parameters), when the method has one.</summary>
    internal const string TrainingStateFile = "adapter_training_state.safetensors";

    /// <summary>
    /// Steps between <see cref="ReleaseFreedMemory"/> calls. Without them resident memory keeps growing (heap
    /// fragmentation, and managed garbage the GC does not hurry to collect because it cannot see libtorch's memory);
    /// after every step they cost about 10% of throughput, since the freed pages are faulted back in.
    /// </summary>
    private const int ReleaseMemoryEverySteps = 10;

    private readonly PeftModel _model;
    private readonly TrainingOptions _o;
    private readonly List<Parameter> _params;
    private readonly AdamW _optimizer;

    /// <summary>A trainer of <paramref name="model"/>'s active adapter with <paramref name="options"/>.</summary>
    /// <param name="model">The model; its trainable parameters (the active adapter's) are optimized.</param>
    /// <param name="options">Optimizer, schedule, batching and checkpoint settings.</param>
    /// <exception cref="ArgumentException">An option is invalid.</exception>
    /// <exception cref="InvalidOperationException">The model has no trainable parameters (an adapter loaded without isTrainable).</exception>
    public Trainer(PeftModel model, TrainingOptions options)
    {
        options.Validate();
        _model = model;
        _o = options;
        _params = model.TrainableParameters().Select(p => p.P).ToList();
        if (options.GradientCheckpointing) model.Model.GradientCheckpointingEnable();
        if (_params.Count == 0) throw new InvalidOperationException("The model has no trainable parameters.");
        if (model.Model.parameters().Any(p => p.dtype == ScalarType.Float16)) Scaler = new LossScaler(options.InitialLossScale);
        var decay = DecayParameters(model.Model);
        var groups = new[] { (Params: _params.Where(p => decay.Contains(p.Handle)).ToList(), Wd: options.WeightDecay), (Params: _params.Where(p => !decay.Contains(p.Handle)).ToList(), Wd: 0.0) }
            .Where(g => g.Params.Count > 0) // an empty group would make single-group checkpoints unloadable
            .Select(g => new AdamW.ParamGroup(g.Params, options.LearningRate, options.AdamBeta1, options.AdamBeta2, options.AdamEpsilon, g.Wd));
        _optimizer = optim.AdamW(groups, options.LearningRate, options.AdamBeta1, options.AdamBeta2, options.AdamEpsilon, options.WeightDecay);
    }

    private static readonly System.Text.RegularExpressions.Regex NoDecayName = new(@"bias|layernorm|rmsnorm|(?:^|\.)norm(?:$|\.)|_norm(?:$|\.)");

    /// <summary>
    /// Handles of the parameters that get weight decay, as transformers' Trainer.get_decay_parameter_names: all but
    /// those of LayerNorm/RMSNorm modules and those whose lower-cased name matches bias or a norm pattern.
    /// </summary>
    internal static HashSet<IntPtr> DecayParameters(nn.Module model)
    {
        var norms = model.named_modules().Where(m => m.module is LayerNorm or Models.Layers.LayerNorm or Models.Layers.RmsNorm)
            .SelectMany(m => m.module.parameters()).Select(p => p.Handle).ToHashSet();
        return model.named_parameters().Where(p => !norms.Contains(p.parameter.Handle) && !NoDecayName.IsMatch(p.name.ToLowerInvariant()))
            .Select(p => p.parameter.Handle).ToHashSet();
    }

    /// <summary>Optimizer steps done (transformers' <c>state.global_step</c>).</summary>
    public int GlobalStep { get; private set; }
    /// <summary>Micro-batches consumed.</summary>
    public long MicroBatches { get; private set; }
    /// <summary>Learning rate of the last step.</summary>
    public double CurrentLearningRate { get; private set; }
    /// <summary>Training loss of every step so far (mean over its label tokens).</summary>
    public List<double> Losses { get; } = [];
    /// <summary>The dynamic loss scaler of a float16 model, else null.</summary>
    internal LossScaler? Scaler { get; }

    private void SetLr(double lr)
    {
        CurrentLearningRate = lr;
        foreach (var g in _optimizer.ParamGroups) g.LearningRate = lr;
    }

    /// <summary>
    /// One optimizer step over <paramref name="microBatches"/> (gradient accumulation): each micro-batch's summed token
    /// loss is divided by the valid tokens of the whole step, as transformers does with num_items_in_batch.
    /// Returns the step's loss (mean over its valid tokens). Throws when the loss is NaN or infinite.
    /// </summary>
    internal double Step(IReadOnlyList<Batch> microBatches, double lr)
    {
        SetLr(lr);
        double total = Backward(microBatches);
        if (Scaler?.Unscale(_params) != false)
        {
            // The norm is needed anyway: a max of +inf clips nothing (the factor is clamped to 1).
            double norm = nn.utils.clip_grad_norm_(_params, _o.MaxGradNorm > 0 ? _o.MaxGradNorm : double.PositiveInfinity, 2.0);
            if (!double.IsFinite(norm))
            {
                ZeroGrad();
                throw new TrainingDivergedException(GlobalStep + 1, "gradient norm", norm, TrainingDivergedException.LearningRateAdvice);
            }
            _optimizer.step();
            if (FirstNonFinite() is string name)
            {
                ZeroGrad();
                throw new TrainingDivergedException(GlobalStep + 1, $"weight '{name}' after the update", double.NaN,
                    $"The update at learning rate {lr} made it non-finite: {TrainingDivergedException.LearningRateAdvice}", adapterChanged: true);
            }
        }
        ZeroGrad();
        GlobalStep++;
        Losses.Add(total);
        return total;
    }

    /// <summary>Forward and backward over the micro-batches, leaving the gradients on the trainable parameters; returns the loss.</summary>
    internal double Backward(IReadOnlyList<Batch> microBatches)
    {
        long valid = microBatches.Sum(_model.CountLabelTokens); // the collator's count (no device sync) unless virtual tokens shift the labels
        if (valid == 0) throw new InvalidOperationException($"Step {GlobalStep + 1}: the batch has no label tokens (all -100); nothing to learn from.");
        _model.Model.train();
        // Dropout masks come from a generator of this step alone (never torch's global one, which concurrent Fits
        // share), so they depend only on the seed and the step, and a resumed run repeats them.
        using var rng = new Generator((ulong)(_o.Seed + GlobalStep));
        using var rngScope = Rng.Use(rng);
        double total = 0;
        foreach (var b in microBatches)
        {
            using var scope = NewDisposeScope();
            // From the hidden states through a chunked head: the (batch, seq, vocab) float32 logits never exist whole.
            var (sum, _) = _model.LossSum(b.InputIds, b.AttentionMask, b.Labels);
            var loss = sum.div(valid);
            double value = loss.item<float>();
            if (!double.IsFinite(value))
            {
                ZeroGrad();
                throw new TrainingDivergedException(GlobalStep + 1, "loss", value, GlobalStep == 0
                    ? "No update has been made yet, so the learning rate is not the cause: check the base model's weights, the adapter's and the data."
                    : TrainingDivergedException.LearningRateAdvice);
            }
            total += value;
            if (Scaler is null) loss.backward();
            else using (var scaled = loss.mul(Scaler.Scale)) scaled.backward();
        }
        return total;
    }

    /// <summary>
    /// Sets the gradients to none, as PyTorch's zero_grad does by default. TorchSharp's Optimizer.zero_grad leaves one
    /// undisposed wrapper per parameter for the finalizer, so the old gradients outlive each step; reading
    /// <c>p.grad</c> makes a new wrapper that is disposed here.
    /// </summary>
    internal void ZeroGrad()
    {
        foreach (var p in _params)
        {
            using var g = p.grad;
            if (g is not null) p.grad = null;
        }
    }

    /// <summary>Mean loss over all label tokens of <paramref name="examples"/>.</summary>
    internal double Evaluate(IReadOnlyList<(int[] Ids, long[] Labels)> examples, Collator collator)
    {
        _model.Model.eval();
        var (sum, count) = EvaluationLoss.Sum(_model, examples, collator, _o.BatchSize);
        _model.Model.train();
        return count == 0 ? double.NaN : sum / count;
    }

    /// <summary>
    /// Runs training to the end, to early stopping or to cancellation; resumes from <paramref name="resumeFrom"/> (a
    /// checkpoint-N folder) when given. Before each step <paramref name="cancellation"/> is checked and
    /// <paramref name="checkAlive"/> runs (it may throw <see cref="OperationCanceledException"/>, as ML.NET's
    /// Host.CheckAlive does), so a cancelled run stops within one step, with the adapter of the last finished step.
    /// </summary>
    /// <param name="train">The training examples.</param>
    /// <param name="eval">Examples whose mean loss is reported every <see cref="TrainingOptions.EvalSteps"/> steps and at the end; null for none.</param>
    /// <param name="progress">Receives a <see cref="TrainingProgress"/> every <see cref="TrainingOptions.LoggingSteps"/> steps, at evaluations and at the end.</param>
    /// <param name="cancellation">Stops training between steps (<see cref="OperationCanceledException"/>); checkpoints already written stay.</param>
    /// <param name="resumeFrom">A checkpoint folder to resume from, or null.</param>
    /// <param name="checkAlive">Runs before each step and may throw <see cref="OperationCanceledException"/>; null for none.</param>
    /// <returns>Where the run ended (steps, loss history).</returns>
    /// <exception cref="TrainingDivergedException">The loss became NaN or infinite; the adapter was left as it was before that step.</exception>
    public TrainerState Train(IReadOnlyList<TrainingExample> train, IReadOnlyList<TrainingExample>? eval = null,
        IProgress<TrainingProgress>? progress = null, CancellationToken cancellation = default, string? resumeFrom = null,
        Action? checkAlive = null)
    {
        if (train.Count == 0) throw new ArgumentException("The training set is empty.", nameof(train));
        var cfg = _model.Model.Config;
        var collator = Collator.For(cfg, _o, _model.Tuner.ContextPositions);
        var encoded = train.Select((e, i) => collator.Encode(e, i)).ToList();
        var evalEncoded = eval?.Select((e, i) => collator.Encode(e, i)).ToList();
        if (evalEncoded is { Count: 0 }) throw new ArgumentException("The eval set is empty; pass null for no evaluation.", nameof(eval));
        int batchesPerEpoch = (encoded.Count + _o.BatchSize - 1) / _o.BatchSize;
        int totalSteps = _o.MaxSteps > 0 ? _o.MaxSteps : Math.Max(1, (int)Math.Ceiling(_o.NumEpochs * batchesPerEpoch / _o.GradientAccumulationSteps));
        int warmup = LrSchedule.WarmupSteps(_o, totalSteps);

        if (resumeFrom != null) Resume(resumeFrom, totalSteps);
        if (FirstNonFinite() is string bad)
            throw new TrainingDivergedException(GlobalStep + 1, $"weight '{bad}' before training", double.NaN,
                "It was not finite before any update, so the learning rate is not the cause: check the adapter's initialisation, LoraAlpha and the loaded weights.");
        int startStep = GlobalStep;
        var device = _model.Model.Device; // batches are built there: a CUDA model never sees a CPU tensor
        var sw = Stopwatch.StartNew();
        long tokens = 0; double windowLoss = 0; int windowSteps = 0;
        int truncatedBase = 0;
        int[]? order = null; long orderEpoch = -1;
        var best = new BestEval(_o, evalEncoded != null);
        while (GlobalStep < totalSteps)
        {
            cancellation.ThrowIfCancellationRequested();
            checkAlive?.Invoke();
            var micro = new List<Batch>();
            try
            {
                for (int k = 0; k < _o.GradientAccumulationSteps; k++)
                {
                    long epoch = MicroBatches / batchesPerEpoch; int pos = (int)(MicroBatches % batchesPerEpoch);
                    if (epoch != orderEpoch) { order = Collator.Order(encoded.Count, _o.Seed, (int)epoch, _o.Shuffle); orderEpoch = epoch; }
                    var items = order!.Skip(pos * _o.BatchSize).Take(_o.BatchSize).Select(i => encoded[i]).ToList();
                    micro.Add(collator.Collate(items, device));
                    MicroBatches++;
                }
                double lr = _o.LearningRate * LrSchedule.Factor(_o.LrScheduler, GlobalStep, warmup, totalSteps);
                double stepLoss = Step(micro, lr);
                windowLoss += stepLoss; windowSteps++;
                WarnWhenTheLossRises(stepLoss);
                tokens += micro.Sum(b => b.Tokens);
            }
            finally { foreach (var b in micro) b.Dispose(); }
            if (GlobalStep % ReleaseMemoryEverySteps == 0) ReleaseFreedMemory();

            double? evalLoss = null;
            if (evalEncoded != null && ((_o.EvalSteps > 0 && GlobalStep % _o.EvalSteps == 0) || GlobalStep == totalSteps))
                evalLoss = Evaluate(evalEncoded, collator);
            bool stopEarly = evalLoss is double el && best.Add(el, GlobalStep, _params);
            if (_o.SaveSteps > 0 && GlobalStep % _o.SaveSteps == 0)
                SaveCheckpoint(Path.Combine(_o.OutputDir!, $"checkpoint-{GlobalStep}"), totalSteps, collator.Truncated + truncatedBase);
            if (progress != null && (GlobalStep % Math.Max(1, _o.LoggingSteps) == 0 || GlobalStep == totalSteps || evalLoss != null || stopEarly))
            {
                var elapsed = sw.Elapsed;
                int done = GlobalStep - startStep;
                var eta = done > 0 ? TimeSpan.FromTicks(elapsed.Ticks / done * (totalSteps - GlobalStep)) : TimeSpan.Zero;
                progress.Report(new TrainingProgress(GlobalStep, totalSteps, windowSteps > 0 ? windowLoss / windowSteps : double.NaN,
                    CurrentLearningRate, tokens / Math.Max(1e-9, elapsed.TotalSeconds), elapsed, eta, evalLoss, collator.Truncated,
                    (double)MicroBatches / batchesPerEpoch));
                windowLoss = 0; windowSteps = 0;
            }
            if (stopEarly) break;
        }
        best.Restore(_params);
        return State(totalSteps, collator.Truncated) with { StoppedEarly = GlobalStep < totalSteps, BestStep = best.Step, BestEvalLoss = best.Loss };
    }

    /// <summary>
    /// The lowest eval loss so far, its step and (with LoadBestModelAtEnd) a copy of the trainable weights then; counts
    /// evaluations without improvement for early stopping (transformers' EarlyStoppingCallback, threshold 0).
    /// </summary>
    private sealed class BestEval(TrainingOptions o, bool hasEval)
    {
        private List<Tensor>? _weights;
        private int _sinceBest;

        public double? Loss { get; private set; }
        public int? Step { get; private set; }

        /// <summary>Records an evaluation; true when training should stop early.</summary>
        public bool Add(double loss, int step, List<Parameter> parameters)
        {
            if (!hasEval) return false;
            if (Loss is null || loss < Loss)
            {
                Loss = loss; Step = step; _sinceBest = 0;
                if (o.LoadBestModelAtEnd)
                {
                    Dispose();
                    using (no_grad()) _weights = parameters.Select(p => p.detach().clone().DetachFromDisposeScope()).ToList();
                }
                return false;
            }
            _sinceBest++;
            return o.EarlyStoppingPatience > 0 && _sinceBest >= o.EarlyStoppingPatience;
        }

        /// <summary>Puts the best weights back (LoadBestModelAtEnd) and frees the copy.</summary>
        public void Restore(List<Parameter> parameters)
        {
            if (_weights != null)
                using (no_grad())
                    for (int i = 0; i < parameters.Count; i++) parameters[i].copy_(_weights[i]);
            Dispose();
        }

        private void Dispose()
        {
            foreach (var w in _weights ?? []) w.Dispose();
            _weights = null;
        }
    }

    /// <summary>How far above the first step's loss a later loss warns: the run is diverging, not learning.</summary>
    internal const double LossRiseFactor = 2.0;

    private bool _warnedRise;

    /// <summary>Warnings of this run (also sent to <see cref="Warning"/>): a loss rising far above its start.</summary>
    public List<string> Warnings { get; } = [];

    /// <summary>Receives each warning when set (the ML.NET backend logs them).</summary>
    public Action<string>? Warning { get; set; }

    private void WarnWhenTheLossRises(double loss)
    {
        double first = Losses[0];
        if (_warnedRise || !(first > 0) || !(loss > LossRiseFactor * first)) return;
        _warnedRise = true;
        string message = FormattableString.Invariant(
            $"Warning: at step {GlobalStep} the training loss {loss:G6} is more than {LossRiseFactor} times the first step's {first:G6}; the learning rate ({_o.LearningRate:G4}) is probably too high and the adapter is getting worse.");
        Warnings.Add(message);
        Warning?.Invoke(message);
    }

    /// <summary>The name of the first trainable parameter holding a NaN or an infinity, or null.</summary>
    private string? FirstNonFinite()
    {
        using var scope = NewDisposeScope();
        foreach (var (name, p) in _model.TrainableParameters())
            if (!p.isfinite().all().item<bool>()) return name;
        return null;
    }

    /// <summary>Frees the optimizer state (AdamW's two moment tensors per trainable parameter).</summary>
    public void Dispose() => _optimizer.Dispose();

    private static void ReleaseFreedMemory()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Native.NativeHeap.Trim();
    }

    private TrainerState State(int totalSteps, int truncated) => new()
    {
        GlobalStep = GlobalStep, MicroBatches = MicroBatches, TotalSteps = totalSteps, Seed = _o.Seed, Truncated = truncated, LossHistory = [.. Losses],
        LossScale = Scaler?.Scale, LossScaleGoodSteps = Scaler?.GoodSteps ?? 0,
    };

    /// <summary>
    /// Writes adapter (PEFT format), optimizer state and trainer state into <paramref name="folder"/> as one folder
    /// swap (<see cref="AtomicFolder"/>): re-saving an existing checkpoint-N keeps the old or the new one whole at
    /// every instant, and leftovers of killed saves are removed.
    /// </summary>
    internal void SaveCheckpoint(string folder, int totalSteps, int truncated = 0) => AtomicFolder.Write(folder, tmp =>
    {
        PeftAdapterIO.Save(_model, tmp);
        if (_model.Tuner.TrainingState(_model.ActiveAdapter) is { Count: > 0 } state)
            PeftAdapterIO.WriteTensors(Path.Combine(tmp, TrainingStateFile), state);
        _optimizer.save_state_dict(Path.Combine(tmp, OptimizerFile));
        AtomicFile.WriteAllText(Path.Combine(tmp, TrainerState.FileName), State(totalSteps, truncated).ToJson());
    });

    /// <summary>Loads adapter weights, optimizer state and position from a checkpoint folder.</summary>
    internal void Resume(string folder, int? expectedTotalSteps = null)
    {
        AtomicFolder.Recover(folder);
        var state = TrainerState.Read(folder);
        if (expectedTotalSteps is int t && state.TotalSteps != t)
            throw new InvalidOperationException($"Checkpoint '{folder}' was written for {state.TotalSteps} total steps; these options give {t}. Resume with the same options.");
        if (state.Seed != _o.Seed) throw new InvalidOperationException($"Checkpoint '{folder}' used seed {state.Seed}; the options have {_o.Seed}.");
        PeftAdapterIO.LoadWeights(_model, folder);
        if (_model.Tuner.TrainingState(_model.ActiveAdapter) is { Count: > 0 } training)
            PeftAdapterIO.LoadInto(training, folder, fileName: TrainingStateFile);
        var opt = Path.Combine(folder, OptimizerFile);
        if (!File.Exists(opt)) throw new FileNotFoundException($"Checkpoint '{folder}' has no {OptimizerFile}.", opt);
        _optimizer.load_state_dict(opt);
        GlobalStep = state.GlobalStep;
        MicroBatches = state.MicroBatches;
        Losses.Clear(); Losses.AddRange(state.LossHistory);
        if (Scaler != null && state.LossScale is double scale) Scaler.Restore(scale, state.LossScaleGoodSteps);
    }
}

/// <summary>
/// Thrown at the first non-finite value of a run: the loss, the gradient norm (before clipping), or a trainable
/// weight (before training, or after an update); the message says which, at which step, and what to do.
/// </summary>
public sealed class TrainingDivergedException(int step, string what, double value, string advice, bool adapterChanged = false)
    : InvalidOperationException($"Training stopped at step {step}: the {what} is {(double.IsNaN(value) ? "not finite" : value.ToString(System.Globalization.CultureInfo.InvariantCulture))}. {advice} " +
        (adapterChanged ? "The adapter in memory is unusable; the last checkpoint was left unchanged." : "The adapter and the last checkpoint were left unchanged."))
{
    internal const string LearningRateAdvice = "Lower the learning rate, enable gradient clipping (MaxGradNorm) or check the data.";

    /// <summary>The step at which training stopped (1-based).</summary>
    public int Step { get; } = step;

    /// <summary>"loss", "gradient norm" or "weight '...' ...".</summary>
    public string What { get; } = what;

    /// <summary>The non-finite value (or the value that made it so).</summary>
    public double Value { get; } = value;
}
