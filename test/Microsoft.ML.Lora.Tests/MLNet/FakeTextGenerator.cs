using System.Collections.Concurrent;
using System.Text.Json;
using Microsoft.ML.Lora.MLNet;

namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>
/// Stand-in for the TorchSharp backend: "trains" a tag from the examples and completes a prompt with the prompt
/// reversed plus the tag. Its adapter is an adapter_config.json with the tag and a seeded pseudo-random
/// adapter_model.safetensors, which <see cref="Load"/> checks byte for byte.
/// </summary>
internal sealed class FakeTextGeneratorFactory : ITextGeneratorFactory
{
    public const int AdapterBytes = 300_000;

    /// <summary>Every generator made by any instance, for assertions on calls and disposal.</summary>
    public static ConcurrentQueue<FakeTextGenerator> Made { get; } = new();

    public ITextGenerator Train(LoraCausalLmOptions options, IReadOnlyList<PromptCompletion> examples, IReadOnlyList<PromptCompletion>? validation, TrainingControl control)
    {
        control.CheckAlive();
        control.Log($"fake training on {examples.Count} examples");
        string tag = $"n{examples.Count}-r{options.Lora.Rank}";
        return Remember(new FakeTextGenerator(tag, options.Seed.GetValueOrDefault()));
    }

    public ITextGenerator Load(LoraCausalLmOptions options, string adapterFolder)
    {
        using var config = JsonDocument.Parse(File.ReadAllText(Path.Combine(adapterFolder, "adapter_config.json")));
        string tag = config.RootElement.GetProperty("tag").GetString()!;
        int seed = config.RootElement.GetProperty("seed").GetInt32();
        byte[] weights = File.ReadAllBytes(Path.Combine(adapterFolder, "adapter_model.safetensors"));
        if (!weights.AsSpan().SequenceEqual(AdapterWeights(seed)))
            throw new InvalidDataException("adapter_model.safetensors did not come back bit-identical.");
        return Remember(new FakeTextGenerator(tag, seed));
    }

    public static byte[] AdapterWeights(int seed)
    {
        var bytes = new byte[AdapterBytes];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static FakeTextGenerator Remember(FakeTextGenerator generator)
    {
        Made.Enqueue(generator);
        return generator;
    }
}

internal sealed class FakeTextGenerator : ITextGenerator
{
    private readonly int _seed;

    public FakeTextGenerator(string tag, int seed)
    {
        Tag = tag;
        _seed = seed;
    }

    public string Tag { get; }

    public List<int> BatchSizes { get; } = new();

    public bool Disposed { get; private set; }

    public static string Complete(string prompt, string tag) => new string(prompt.Reverse().ToArray()) + "|" + tag;

    /// <summary>The generation settings of every call, in order.</summary>
    public List<LoraGenerationOptions> Settings { get; } = new();

    /// <summary>The seeds given to <see cref="ResetSampling"/>.</summary>
    public List<int> Resets { get; } = new();

    public void ResetSampling(int seed) => Resets.Add(seed);

    public IReadOnlyList<string> Generate(IReadOnlyList<string> prompts, LoraGenerationOptions generation)
    {
        if (Disposed) throw new ObjectDisposedException(nameof(FakeTextGenerator));
        Settings.Add(generation);
        BatchSizes.Add(prompts.Count);
        return prompts.Select(p => Complete(p, Tag)).ToList();
    }

    /// <summary>Token prompts complete as "ids:" + the ids reversed, comma-separated, + "|" + tag.</summary>
    public IReadOnlyList<string> GenerateFromIds(IReadOnlyList<int[]> promptIds, LoraGenerationOptions generation)
    {
        if (Disposed) throw new ObjectDisposedException(nameof(FakeTextGenerator));
        Settings.Add(generation);
        BatchSizes.Add(promptIds.Count);
        return promptIds.Select(p => "ids:" + string.Join(",", p.Reverse()) + "|" + Tag).ToList();
    }

    /// <summary>
    /// Each row scores completion length + 1 tokens (the EOS), each with loss (prompt length + 1) / 10: a row-dependent
    /// per-token loss, so a micro-average differs from a mean of row means.
    /// </summary>
    public (double Sum, long Tokens) CompletionLoss(IReadOnlyList<PromptCompletion> examples)
    {
        if (Disposed) throw new ObjectDisposedException(nameof(FakeTextGenerator));
        double sum = 0; long tokens = 0;
        foreach (var e in examples)
        {
            int n = (e.CompletionIds?.Length ?? e.Completion.Length) + 1;
            sum += n * ((e.PromptIds?.Length ?? e.Prompt.Length) + 1) / 10.0;
            tokens += n;
        }
        return (sum, tokens);
    }

    public void SaveAdapter(string folder)
    {
        File.WriteAllText(Path.Combine(folder, "adapter_config.json"), JsonSerializer.Serialize(new { tag = Tag, seed = _seed, r = 8 }));
        File.WriteAllBytes(Path.Combine(folder, "adapter_model.safetensors"), FakeTextGeneratorFactory.AdapterWeights(_seed));
    }

    public void Dispose() => Disposed = true;
}
