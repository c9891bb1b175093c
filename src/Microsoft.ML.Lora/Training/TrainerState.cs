using System.Text.Json;

namespace Microsoft.ML.Lora.Training;

/// <summary>Where a run stands; written as trainer_state.json into each checkpoint.</summary>
internal sealed record TrainerState
{
    public int GlobalStep { get; init; }
    /// <summary>Micro-batches consumed so far (epoch = this / batches per epoch; position = the remainder).</summary>
    public long MicroBatches { get; init; }
    public int TotalSteps { get; init; }
    public int Seed { get; init; }
    public int Truncated { get; init; }
    public List<double> LossHistory { get; init; } = [];
    /// <summary>Loss scale and good steps since its last change (float16 models only).</summary>
    public double? LossScale { get; init; }
    public int LossScaleGoodSteps { get; init; }
    /// <summary>True when early stopping ended the run before its last step.</summary>
    public bool StoppedEarly { get; init; }
    /// <summary>Step and value of the lowest eval loss of this run, when evaluated.</summary>
    public int? BestStep { get; init; }
    public double? BestEvalLoss { get; init; }

    public const string FileName = "trainer_state.json";

    public string ToJson() => JsonSerializer.Serialize(this, new JsonSerializerOptions { WriteIndented = true });

    public static TrainerState Read(string folder)
    {
        var path = Path.Combine(folder, FileName);
        if (!File.Exists(path)) throw new FileNotFoundException($"'{folder}' is not a checkpoint: no {FileName}.", path);
        return JsonSerializer.Deserialize<TrainerState>(File.ReadAllText(path)) ?? throw new InvalidDataException($"'{path}' is empty.");
    }
}
