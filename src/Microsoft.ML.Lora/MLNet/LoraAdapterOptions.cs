namespace Microsoft.ML.Lora;

/// <summary>Shape of the LoRA adapter (written to adapter_config.json in the PEFT format).</summary>
public sealed class LoraAdapterOptions
{
    /// <summary>Rank r of the low-rank update. Default 8.</summary>
    public int Rank { get; set; } = 8;

    /// <summary>Scaling numerator: the update is scaled by Alpha / Rank. Default 16.</summary>
    public float Alpha { get; set; } = 16f;

    /// <summary>Dropout applied to the adapter input while training. Default 0.05.</summary>
    public float Dropout { get; set; } = 0.05f;

    /// <summary>Names of the modules to adapt (PEFT's target_modules); null picks the model family's default. Default null.</summary>
    public string[]? TargetModules { get; set; }

    internal LoraAdapterOptions Clone() => new()
    {
        Rank = Rank, Alpha = Alpha, Dropout = Dropout, TargetModules = (string[]?)TargetModules?.Clone(),
    };
}
