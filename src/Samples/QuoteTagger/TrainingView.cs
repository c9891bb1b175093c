using System.Globalization;
using Microsoft.ML.Lora;
using Spectre.Console;

namespace QuoteTagger;

/// <summary>
/// Shows a Fit's typed progress (<see cref="LoraCausalLmOptions.Progress"/>) as a Spectre.Console progress bar and
/// keeps the losses for the chart and the summary table. Spectre redraws the bar in place on a terminal and writes
/// plain lines when the output is redirected.
/// </summary>
internal sealed class TrainingView : IProgress<LoraTrainingProgress>
{
    private readonly Lock _gate = new();
    private readonly List<LoraTrainingProgress> _reports = [];
    private ProgressTask? _task;

    /// <summary>Training loss at each report (the mean over the steps since the previous one).</summary>
    public IReadOnlyList<(int step, double loss)> TrainingLoss
    {
        get { lock (_gate) return _reports.Where(r => !double.IsNaN(r.Loss)).Select(r => (r.Step, r.Loss)).ToList(); }
    }

    /// <summary>Validation loss at each report that validated.</summary>
    public IReadOnlyList<(int step, double loss)> ValidationLoss
    {
        get { lock (_gate) return _reports.Where(r => r.ValidationLoss is not null).Select(r => (r.Step, r.ValidationLoss!.Value)).ToList(); }
    }

    /// <summary>Runs <paramref name="fit"/> (which reports to this object) under a live progress bar.</summary>
    public T Run<T>(Func<T> fit) =>
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new SpinnerColumn())
            .Start(context =>
            {
                lock (_gate) _task = context.AddTask("fine-tuning", maxValue: 1);
                try { return fit(); }
                finally { lock (_gate) _task.StopTask(); }
            });

    /// <summary>Called by the trainer on the training thread.</summary>
    public void Report(LoraTrainingProgress value)
    {
        lock (_gate)
        {
            _reports.Add(value);
            if (_task is null) return;
            _task.MaxValue = Math.Max(value.TotalSteps, 1);
            _task.Value = value.Step;
            _task.Description = Markup.Escape(Describe(value));
        }
    }

    /// <summary>"step 12/160 loss 2.345 val 2.401 lr 4.9e-03 1234 tok/s ETA 00:21" (invariant culture).</summary>
    internal static string Describe(LoraTrainingProgress p)
    {
        var inv = CultureInfo.InvariantCulture;
        string validation = p.ValidationLoss is double v ? " val " + v.ToString("0.000", inv) : "";
        return string.Create(inv, $"step {p.Step}/{p.TotalSteps} loss {p.Loss:0.000}{validation} lr {p.LearningRate:0.0e+00} {p.TokensPerSecond:0} tok/s ETA {p.Eta:mm\\:ss}");
    }

    /// <summary>A table of the first, best and last losses, the throughput and the time.</summary>
    public Table Summary()
    {
        lock (_gate)
        {
            var table = new Table().Title("fine-tuning").AddColumn("").AddColumn(new TableColumn("step").RightAligned())
                .AddColumn(new TableColumn("training loss").RightAligned()).AddColumn(new TableColumn("validation loss").RightAligned());
            if (_reports.Count == 0) return table;
            static string F(double? x) => x is double d && !double.IsNaN(d) ? d.ToString("0.000", CultureInfo.InvariantCulture) : "-";
            void Row(string name, LoraTrainingProgress r) => table.AddRow(name, r.Step.ToString(CultureInfo.InvariantCulture), F(r.Loss), F(r.ValidationLoss));
            Row("first", _reports[0]);
            if (_reports.Where(r => r.ValidationLoss is not null).MinBy(r => r.ValidationLoss) is { } best)
                Row("best validation", best);
            Row("last", _reports[^1]);
            var last = _reports[^1];
            table.Caption(string.Create(CultureInfo.InvariantCulture,
                $"{last.Step} steps, {last.Epoch:0.#} epochs, {last.TokensPerSecond:0} tokens/s, {last.Elapsed.TotalSeconds:0.0} s"));
            return table;
        }
    }
}
