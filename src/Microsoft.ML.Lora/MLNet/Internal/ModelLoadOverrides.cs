namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// What <c>mlContext.Lora().LoadModel(path, baseModelFolder, device)</c> tells the loaders of this library while ML.NET
/// reads the zip (ML.NET gives a loader no arguments of its own): the zip's folder, and a base folder and device to use
/// instead of the saved ones. Flows with the async context of the call, so concurrent loads do not mix.
/// </summary>
internal sealed record ModelLoadOverrides(string? ZipFolder, string? BaseModelFolder, string? Device)
{
    private static readonly AsyncLocal<ModelLoadOverrides?> CurrentValue = new();

    public static ModelLoadOverrides? Current => CurrentValue.Value;

    public static T With<T>(ModelLoadOverrides overrides, Func<T> load)
    {
        var previous = CurrentValue.Value;
        CurrentValue.Value = overrides;
        try { return load(); }
        finally { CurrentValue.Value = previous; }
    }
}
