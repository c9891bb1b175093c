using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Peft;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// A base model with a trained or loaded LoRA adapter: batched generation (left padding, KV cache, stop at EOS,
/// only the new tokens decoded) and PEFT adapter saving. Owns the model; calls are serialized by <see cref="SharedTextGenerator"/>.
/// </summary>
internal sealed class TorchSharpTextGenerator : ITextGenerator
{
    private readonly LoraModel _lora;
    private readonly IBackendTokenizer _tokenizer;
    private readonly LoraCausalLmOptions _options;
    private readonly Generator _generator;
    private bool _disposed;

    public TorchSharpTextGenerator(LoraModel lora, IBackendTokenizer tokenizer, LoraCausalLmOptions options)
    {
        _lora = lora;
        _tokenizer = tokenizer;
        _options = options;
        _generator = new Generator(lora.Model);
    }

    internal LoraModel Model => _lora;

    public IReadOnlyList<string> Generate(IReadOnlyList<string> prompts)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var config = _lora.Model.Config;
        return GenerateIds(prompts.Select(p => (IReadOnlyList<int>)TorchSharpTextGeneratorFactory.PromptIds(_tokenizer, p, config)).ToList());
    }

    public IReadOnlyList<string> GenerateFromIds(IReadOnlyList<int[]> promptIds)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var config = _lora.Model.Config;
        return GenerateIds(promptIds.Select(p => (IReadOnlyList<int>)TorchSharpTextGeneratorFactory.PromptIds(_tokenizer, p, config)).ToList());
    }

    private IReadOnlyList<string> GenerateIds(List<IReadOnlyList<int>> ids)
    {
        if (ids.Count == 0) return [];
        var g = _options.Generation;
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
            Seed = _options.Seed,
            UseCache = true,
        };
        _lora.Model.eval();
        var generated = _generator.Generate(ids, generation);
        return generated.Select(tokens => _tokenizer.Decode(eos is int stop ? tokens.Where(t => t != stop).ToList() : tokens)).ToList();
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
        _lora.Model.Dispose();
    }
}
