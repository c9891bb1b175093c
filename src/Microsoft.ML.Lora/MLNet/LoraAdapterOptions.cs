namespace Microsoft.ML.Lora;

/// <summary>
/// Shape of the LoRA adapter (written to adapter_config.json in the PEFT format): the ML.NET face of
/// <see cref="Peft.LoraConfig"/>, whose defaults (PEFT's) it takes, so there is one set of defaults.
/// </summary>
public sealed class LoraAdapterOptions
{
    private static readonly Peft.LoraConfig Defaults = new();

    /// <summary>Rank r of the low-rank update (<see cref="Peft.LoraConfig.R"/>). Default: PEFT's, 8.</summary>
    public int Rank { get; set; } = Defaults.R;

    /// <summary>Scaling numerator: the update is scaled by Alpha / Rank (<see cref="Peft.LoraConfig.LoraAlpha"/>). Default: PEFT's, 8.</summary>
    public float Alpha { get; set; } = (float)Defaults.LoraAlpha;

    /// <summary>Dropout applied to the adapter input while training (<see cref="Peft.LoraConfig.LoraDropout"/>). Default: PEFT's, 0.</summary>
    public float Dropout { get; set; } = (float)Defaults.LoraDropout;

    /// <summary>Names of the modules to adapt (PEFT's target_modules); null picks the model family's default. Default null.</summary>
    public string[]? TargetModules { get; set; }

    /// <summary>
    /// Names of modules never to adapt, even when <see cref="TargetModules"/> selects them (PEFT's exclude_modules as a
    /// list: a module's path equals a name or ends with "." + name). Default null: none.
    /// </summary>
    public string[]? ExcludeModules { get; set; }

    /// <summary>True when every setting has its default (what <see cref="LoraCausalLmOptions.Method"/> requires).</summary>
    internal bool IsDefault
    {
        get
        {
            var d = new LoraAdapterOptions();
            return Rank == d.Rank && Alpha == d.Alpha && Dropout == d.Dropout && TargetModules is null or { Length: 0 } && ExcludeModules is null or { Length: 0 };
        }
    }

    internal LoraAdapterOptions Clone() => new()
    {
        Rank = Rank, Alpha = Alpha, Dropout = Dropout, TargetModules = (string[]?)TargetModules?.Clone(),
        ExcludeModules = (string[]?)ExcludeModules?.Clone(),
    };
}
