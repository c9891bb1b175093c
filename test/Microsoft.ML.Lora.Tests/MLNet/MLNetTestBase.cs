using Microsoft.ML.Data;
using Microsoft.ML.Lora.MLNet;

namespace Microsoft.ML.Lora.Tests.MLNet;

public sealed class Row
{
    public string Prompt { get; set; } = "";
    public string Completion { get; set; } = "";
    public float Score { get; set; }
}

public sealed class Question
{
    public string Prompt { get; set; } = "";
}

public sealed class Answer
{
    public string Prompt { get; set; } = "";
    public string GeneratedText { get; set; } = "";
}

/// <summary>A throwaway base model folder (config.json and a small weights file) and helpers; one per test class instance.</summary>
public abstract class MLNetTestBase : IDisposable
{
    protected MLNetTestBase()
    {
        Root = Path.Combine(Path.GetTempPath(), "mllora-mlnet-tests-" + Guid.NewGuid().ToString("N"));
        BaseFolder = Path.Combine(Root, "base-model");
        Directory.CreateDirectory(BaseFolder);
        File.WriteAllText(Path.Combine(BaseFolder, "config.json"), "{\"model_type\":\"fake\"}");
        var weights = new byte[4096];
        new Random(1).NextBytes(weights);
        File.WriteAllBytes(Path.Combine(BaseFolder, "model.safetensors"), weights);
    }

    protected string Root { get; }

    protected string BaseFolder { get; }

    protected static Row[] Rows(int count) => Enumerable.Range(0, count)
        .Select(i => new Row { Prompt = $"question {i}", Completion = $"answer {i}", Score = i }).ToArray();

    internal LoraCausalLmTrainer Trainer(MLContext ml, int batchSize = 3, int seed = 7) =>
        ml.Lora().CausalLm(new LoraCausalLmOptions
        {
            BaseModelFolder = BaseFolder,
            Seed = seed,
            Generation = new LoraGenerationOptions { BatchSize = batchSize },
        }, new FakeTextGeneratorFactory());

    internal static FakeTextGenerator FakeOf(LoraCausalLmTransformer transformer) =>
        FakeTextGeneratorFactory.Made.Single(g => ReferenceEquals(g, GeneratorField(transformer)));

    private static object GeneratorField(LoraCausalLmTransformer transformer) =>
        typeof(SharedTextGenerator).GetField("_generator", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!
            .GetValue(transformer.Generator)!;

    protected static List<string> Column(IDataView data, string name) =>
        data.GetColumn<string>(name).ToList();

    public void Dispose()
    {
        try { Directory.Delete(Root, recursive: true); } catch (IOException) { }
        GC.SuppressFinalize(this);
    }
}
