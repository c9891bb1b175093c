using System.Text.Json;

namespace Microsoft.ML.Lora.Training;

/// <summary>Where a run stands (transformers' <c>TrainerState</c>); written as trainer_state.json into each checkpoint.</summary>
public sealed record TrainerState
{
    /// <summary>Optimizer steps done.</summary>
    public int GlobalStep { get; init; }
    /// <summary>Micro-batches consumed so far (epoch = this / batches per epoch; position = the remainder).</summary>
    public long MicroBatches { get; init; }
    /// <summary>Optimizer steps of the whole run.</summary>
    public int TotalSteps { get; init; }
    /// <summary>Seed of the shuffling and of the dropout masks.</summary>
    public int Seed { get; init; }
    /// <summary>Examples cut to the context length.</summary>
    public int Truncated { get; init; }
    /// <summary>Training loss of every step.</summary>
    public List<double> LossHistory { get; init; } = [];
    /// <summary>Loss scale and good steps since its last change (float16 models only).</summary>
    public double? LossScale { get; init; }
    /// <summary>Steps since the loss scale last changed (float16 models only).</summary>
    public int LossScaleGoodSteps { get; init; }
    /// <summary>True when early stopping ended the run before its last step.</summary>
    public bool StoppedEarly { get; init; }
    /// <summary>Step and value of the lowest eval loss of this run, when evaluated.</summary>
    public int? BestStep { get; init; }
    /// <summary>The lowest eval loss seen, at <see cref="BestStep"/> (null without an eval set).</summary>
    public double? BestEvalLoss { get; init; }

    /// <summary>The file name in a checkpoint folder.</summary>
    public const string FileName = "trainer_state.json";

    internal string ToJson() => JsonSerializer.Serialize(this, new JsonSerializerOptions { WriteIndented = true });

    internal static TrainerState Read(string folder)
    {
        var path = Path.Combine(folder, FileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"'{folder}' is not a checkpoint: no {FileName}.", path);
        return JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(path)) ?? throw new InvalidDataException($"'{path}' is empty.");
    }
}
