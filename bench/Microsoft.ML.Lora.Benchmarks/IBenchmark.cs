namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>One benchmark, found by reflection; run with <c>dotnet run -c Release --project bench/Microsoft.ML.Lora.Benchmarks -- NAME</c>.</summary>
internal interface IBenchmark
{
    string Name { get; }
    string Description { get; }
    void Run(string[] args);
}

/// <summary>Reading a benchmark's options.</summary>
internal static class BenchArgs
{
    /// <summary>The integer after <paramref name="name"/> in <paramref name="args"/>, or <paramref name="fallback"/>.</summary>
    public static int Int(string[] args, string name, int fallback)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? int.Parse(args[i + 1], System.Globalization.CultureInfo.InvariantCulture) : fallback;
    }
}
