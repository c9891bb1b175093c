using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// A base model with a trained or loaded LoRA adapter: batched generation (left padding, KV cache, stop at EOS,
/// only the new tokens decoded) and PEFT adapter saving. Owns the model; calls are serialized by <see cref="SharedTextGenerator"/>.
/// </summary>
internal sealed class TorchSharpTextGenerator : ITextGenerator
{
    private readonly PeftModel _lora;
    private readonly IBackendTokenizer _tokenizer;
    private readonly LoraCausalLmOptions _options;
    private readonly Generator _generator;
    private TorchSharp.torch.Generator _sampler;
    private bool _disposed;

    public TorchSharpTextGenerator(PeftModel lora, IBackendTokenizer tokenizer, LoraCausalLmOptions options)
    {
        _lora = lora;
        _tokenizer = tokenizer;
        _options = options;
        _generator = new Generator(lora.Model);
        _sampler = NewSampler(options.Seed.GetValueOrDefault());
    }

    /// <summary>The sampling generator lives with the model (on its device) and advances from call to call.</summary>
    private TorchSharp.torch.Generator NewSampler(int seed) =>
        new((ulong)seed, _lora.Model.parameters().First().device);

    public void ResetSampling(int seed)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var old = _sampler;
        _sampler = NewSampler(seed);
        old.Dispose();
    }

    internal PeftModel Model => _lora;

    public IReadOnlyList<string> Generate(IReadOnlyList<string> prompts, LoraGenerationOptions generation)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var config = _lora.Model.Config;
        return GenerateIds(Bounded(prompts, generation, (p, _) => TorchSharpTextGeneratorFactory.PromptIds(_tokenizer, p, config)), generation);
    }

    public IReadOnlyList<string> GenerateFromIds(IReadOnlyList<int[]> promptIds, LoraGenerationOptions generation)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var config = _lora.Model.Config;
        return GenerateIds(Bounded(promptIds, generation, (p, _) => TorchSharpTextGeneratorFactory.PromptIds(_tokenizer, p, config)), generation);
    }

    /// <summary>
    /// The longest sequence (prompt and new tokens) generated: the model's max_position_embeddings less the positions a
    /// prompt-learning adapter puts before the input, or for models without one (ALiBi: BLOOM) the configured
    /// <see cref="LoraTrainingOptions.MaxSequenceLength"/>.
    /// </summary>
    internal int Context => _lora.Model.Config.MaxPositionEmbeddings > 0
        ? _lora.Model.Config.MaxPositionEmbeddings - _lora.Tuner.ContextPositions
        : _options.Training.MaxSequenceLength;

    /// <summary>
    /// The ids of each prompt, bounded before any forward pass: a prompt whose tokens plus MaxNewTokens exceed
    /// <see cref="Context"/> is cut from the left (<see cref="LongPromptPolicy.TruncateLeft"/>, transformers' pipeline
    /// handle_long_generation="hole") or refused naming it (<see cref="PromptException"/>), as are ids outside the vocabulary.
    /// </summary>
    private List<IReadOnlyList<int>> Bounded<T>(IReadOnlyList<T> prompts, LoraGenerationOptions g, Func<T, int, int[]> encode)
    {
        int context = Context;
        int room = context - g.MaxNewTokens;
        if (room < 1)
            throw new ArgumentOutOfRangeException(nameof(LoraGenerationOptions.MaxNewTokens),
                $"LoraGenerationOptions.MaxNewTokens ({g.MaxNewTokens}) leaves no room for a prompt in the model's context of {context} tokens ({ContextSource}); lower it.");
        var result = new List<IReadOnlyList<int>>(prompts.Count);
        for (int i = 0; i < prompts.Count; i++)
        {
            int[] ids;
            try { ids = encode(prompts[i], i); }
            catch (ArgumentException e) { throw new PromptException(i, e.Message, e); }
            if (ids.Length > room)
            {
                if (g.LongPrompts != LongPromptPolicy.TruncateLeft)
                    throw new PromptException(i, $"the prompt has {ids.Length} tokens; with MaxNewTokens {g.MaxNewTokens} that exceeds the model's context of {context} tokens ({ContextSource}). " +
                        $"Shorten the prompt, lower LoraGenerationOptions.MaxNewTokens, or set LoraGenerationOptions.LongPrompts = TruncateLeft to keep its last {room} tokens.");
                ids = ids[^room..];
            }
            result.Add(ids);
        }
        return result;
    }

    private string ContextSource => _lora.Model.Config.MaxPositionEmbeddings > 0
        ? (_lora.Tuner.ContextPositions > 0
            ? $"max_position_embeddings of its config.json, {_lora.Model.Config.MaxPositionEmbeddings}, less the adapter's {_lora.Tuner.ContextPositions} virtual tokens"
            : "max_position_embeddings of its config.json")
        : "LoraTrainingOptions.MaxSequenceLength, since the model has no fixed context";

    private IReadOnlyList<string> GenerateIds(List<IReadOnlyList<int>> ids, LoraGenerationOptions g)
    {
        if (ids.Count == 0) return [];
        var config = _lora.Model.Config;
        int? eos = config.EosTokenId ?? _tokenizer.EosId;
        var generation = new GenerationOptions
        {
            MaxNewTokens = g.MaxNewTokens,
            DoSample = g.Temperature > 0,
            Temperature = g.Temperature > 0 ? g.Temperature : 1.0,
            TopP = g.TopP is > 0 and < 1 ? g.TopP : 1.0,
            TopK = Math.Max(0, g.TopK),
            RepetitionPenalty = g.RepetitionPenalty > 0 ? g.RepetitionPenalty : 1.0,
            EosTokenIds = eos is int e ? [e] : [],
            PadTokenId = config.PadTokenId ?? eos ?? 0,
            SamplingGenerator = _sampler,
            StopStrings = g.StopStrings,
            Decode = g.StopStrings.Length > 0 ? tokens => _tokenizer.Decode(tokens) : null,
            UseCache = true,
        };
        _lora.Model.eval();
        var generated = _generator.Generate(ids, generation);
        return generated.Select(tokens => _tokenizer.Decode(eos is int stop ? tokens.Where(t => t != stop).ToList() : tokens)).ToList();
    }

    public (double Sum, long Tokens) CompletionLoss(IReadOnlyList<PromptCompletion> examples)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var config = _lora.Model.Config;
        int? eos = config.EosTokenId ?? _tokenizer.EosId;
        var encoded = TorchSharpTextGeneratorFactory.Encode(_tokenizer, config, examples, eos);
        _lora.Model.eval();
        return EvaluationLoss.Sum(_lora, encoded, TorchSharpTextGeneratorFactory.ToTrainingOptions(_options, eos is not null));
    }

    public void SaveAdapter(string folder)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        PeftAdapterIO.Save(_lora, folder);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _sampler.Dispose();
        _lora.Model.Dispose();
    }
}
