namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>One benchmark, found by reflection; run with <c>dotnet run -c Release --project bench/Microsoft.ML.Lora.Benchmarks -- NAME</c>.</summary>
internal interface IBenchmark
{
    string Name { get; }
    string Description { get; }
    void Run(string[] args);
}
