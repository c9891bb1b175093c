namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// Reference-counted owner of an <see cref="ITextGenerator"/>: the transformer holds one reference and every row that
/// generates (a PredictionEngine's, a cursor's) holds its own, so disposing one of them never frees weights that another
/// still uses. The generator is disposed when the last reference goes. Calls to it are serialized.
/// </summary>
internal sealed class SharedTextGenerator
{
    private readonly ITextGenerator _generator;
    private readonly Func<LoraGenerationOptions> _generation;
    private readonly object _lock = new();
    private int _references = 1;

    /// <param name="generator">The model.</param>
    /// <param name="generation">The transformer's current generation settings, read at each call.</param>
    public SharedTextGenerator(ITextGenerator generator, Func<LoraGenerationOptions> generation)
    {
        _generator = generator;
        _generation = generation;
    }

    /// <summary>True once the generator was disposed.</summary>
    public bool IsReleased { get { lock (_lock) return _references == 0; } }

    public Lease Acquire()
    {
        lock (_lock)
        {
            if (_references == 0) throw new ObjectDisposedException(nameof(LoraCausalLmTransformer));
            _references++;
        }
        return new Lease(this);
    }

    /// <summary>Drops the creator's reference.</summary>
    public void Release()
    {
        bool dispose;
        lock (_lock)
        {
            if (_references == 0) return;
            dispose = --_references == 0;
        }
        if (dispose) _generator.Dispose();
    }

    /// <summary>Completions of prompts given as text or, when every prompt has ids, as token ids.</summary>
    public IReadOnlyList<string> Generate(IReadOnlyList<PromptInput> prompts)
    {
        bool ids = prompts.Count > 0 && prompts.All(p => p.Ids != null);
        lock (_lock)
        {
            if (_references == 0) throw new ObjectDisposedException(nameof(LoraCausalLmTransformer));
            var generation = _generation().Clone();
            generation.Validate();
            var result = ids
                ? _generator.GenerateFromIds(prompts.Select(p => p.Ids!).ToList(), generation)
                : _generator.Generate(prompts.Select(p => p.Text).ToList(), generation);
            if (result.Count != prompts.Count)
                throw new InvalidOperationException($"The text generator returned {result.Count} completions for {prompts.Count} prompts.");
            return result;
        }
    }

    public (double Sum, long Tokens) CompletionLoss(IReadOnlyList<PromptCompletion> examples)
    {
        lock (_lock)
        {
            if (_references == 0) throw new ObjectDisposedException(nameof(LoraCausalLmTransformer));
            return _generator.CompletionLoss(examples);
        }
    }

    public void ResetSampling(int seed)
    {
        lock (_lock)
        {
            if (_references == 0) throw new ObjectDisposedException(nameof(LoraCausalLmTransformer));
            _generator.ResetSampling(seed);
        }
    }

    public void SaveAdapter(string folder)
    {
        lock (_lock)
        {
            if (_references == 0) throw new ObjectDisposedException(nameof(LoraCausalLmTransformer));
            _generator.SaveAdapter(folder);
        }
    }

    /// <summary>One reference; disposing it releases that reference once.</summary>
    public sealed class Lease : IDisposable
    {
        private SharedTextGenerator? _owner;

        public Lease(SharedTextGenerator owner) => _owner = owner;

        public IReadOnlyList<string> Generate(IReadOnlyList<PromptInput> prompts) =>
            (_owner ?? throw new ObjectDisposedException(nameof(Lease))).Generate(prompts);

        public void Dispose() => Interlocked.Exchange(ref _owner, null)?.Release();
    }
}
