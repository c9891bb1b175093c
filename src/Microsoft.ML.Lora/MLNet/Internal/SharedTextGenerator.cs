namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// The owner of an <see cref="ITextGenerator"/> (the weights), with ML.NET's ownership rule:
/// <list type="bullet">
/// <item>The transformer owns it. <see cref="Release"/> (the transformer's Dispose, called by the user, by a
/// TransformerChain, or by a PredictionEngine made with ML.NET's default <c>OwnsTransformer = true</c>) ends the
/// ownership once; a second call does nothing.</item>
/// <item>A Transform cursor that reads the generated column holds a counted reference (<see cref="Acquire"/>) until it
/// is disposed (ML.NET always disposes its cursors), so a batch being read is never freed under it.</item>
/// <item>A PredictionEngine's row holds an uncounted one (<see cref="Borrow"/>): ML.NET does not dispose the rows of an
/// engine, so a count would never come back and the weights would stay after every Dispose. After the transformer is
/// disposed its engines throw <see cref="ObjectDisposedException"/>.</item>
/// </list>
/// The generator is disposed when the transformer was disposed and no cursor is open. The adapter files are kept in
/// memory at <see cref="Release"/>, so a model can still be saved after a PredictionEngine disposed it (the usual
/// "predict, then save" order of ML.NET code). Calls are serialized under one
/// lock, and the generator is disposed under it too, so a running Predict or batch always finishes first.
/// </summary>
internal sealed class SharedTextGenerator
{
    private readonly ITextGenerator _generator;
    private readonly Func<LoraGenerationOptions> _generation;
    private readonly object _lock = new();
    private int _references = 1;
    private bool _ownerReleased;
    private Dictionary<string, byte[]>? _adapter; // the adapter files, kept at Release for a later Save

    /// <param name="generator">The model.</param>
    /// <param name="generation">The transformer's current generation settings, read at each call.</param>
    public SharedTextGenerator(ITextGenerator generator, Func<LoraGenerationOptions> generation)
    {
        _generator = generator;
        _generation = generation;
    }

    /// <summary>True once the generator was disposed.</summary>
    public bool IsReleased { get { lock (_lock) return _references == 0; } }

    /// <summary>Counted references: the transformer's (until disposed) and one per open cursor that generates.</summary>
    internal int References { get { lock (_lock) return _references; } }

    /// <summary>A counted reference for a cursor, released by disposing it; refused once the transformer was disposed.</summary>
    public Lease Acquire()
    {
        lock (_lock)
        {
            ThrowIfOwnerReleased();
            _references++;
        }
        return new Lease(this, counted: true);
    }

    /// <summary>An uncounted reference for a PredictionEngine's row: it works until the transformer is disposed.</summary>
    public Lease Borrow()
    {
        lock (_lock) ThrowIfOwnerReleased();
        return new Lease(this, counted: false);
    }

    /// <summary>Ends the transformer's ownership (once); frees the generator unless a cursor still reads.</summary>
    public void Release()
    {
        lock (_lock)
        {
            if (_ownerReleased) return;
            _adapter = KeepAdapter();
            _ownerReleased = true;
            DropReference();
        }
    }

    /// <summary>Completions of prompts given as text or, when every prompt has ids, as token ids.</summary>
    private IReadOnlyList<string> Generate(IReadOnlyList<PromptInput> prompts, bool counted)
    {
        bool ids = prompts.Count > 0 && prompts.All(p => p.Ids != null);
        lock (_lock)
        {
            if (counted) ObjectDisposedException.ThrowIf(_references == 0, typeof(LoraCausalLmTransformer));
            else ThrowIfOwnerReleased();
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
            ThrowIfOwnerReleased();
            return _generator.CompletionLoss(examples);
        }
    }

    public void ResetSampling(int seed)
    {
        lock (_lock)
        {
            ThrowIfOwnerReleased();
            _generator.ResetSampling(seed);
        }
    }

    public void SaveAdapter(string folder)
    {
        lock (_lock)
        {
            if (_ownerReleased && _adapter is { } kept)
            {
                foreach (var (name, bytes) in kept) File.WriteAllBytes(Path.Combine(folder, name), bytes);
                return;
            }
            ThrowIfOwnerReleased();
            _generator.SaveAdapter(folder);
        }
    }

    /// <summary>Under the lock, before the generator goes: its adapter files, or null when they cannot be written (Dispose does not throw).</summary>
    private Dictionary<string, byte[]>? KeepAdapter()
    {
        string? folder = null;
        try
        {
            folder = TempFolder.Create();
            _generator.SaveAdapter(folder);
            return Directory.GetFiles(folder).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes, StringComparer.Ordinal);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return null; }
        finally { if (folder is not null) TempFolder.Delete(folder); }
    }

    /// <summary>Under the lock: throws once the transformer was disposed.</summary>
    private void ThrowIfOwnerReleased()
    {
        if (_ownerReleased)
            throw new ObjectDisposedException(nameof(LoraCausalLmTransformer),
                "The LoraCausalLmTransformer was disposed (by its Dispose, its TransformerChain's, or a PredictionEngine made from it: " +
                "ML.NET's PredictionEngine disposes its transformer unless created with new PredictionEngineOptions { OwnsTransformer = false }).");
    }

    /// <summary>Under the lock: drops one counted reference; the last one disposes the generator.</summary>
    private void DropReference()
    {
        if (--_references == 0) _generator.Dispose();
    }

    /// <summary>One reference; disposing it releases a counted one once.</summary>
    public sealed class Lease : IDisposable
    {
        private SharedTextGenerator? _owner;
        private readonly bool _counted;

        public Lease(SharedTextGenerator owner, bool counted)
        {
            _owner = owner;
            _counted = counted;
        }

        public IReadOnlyList<string> Generate(IReadOnlyList<PromptInput> prompts) =>
            (_owner ?? throw new ObjectDisposedException(nameof(Lease))).Generate(prompts, _counted);

        public void Dispose()
        {
            var owner = Interlocked.Exchange(ref _owner, null);
            if (owner is null || !_counted) return;
            lock (owner._lock) owner.DropReference();
        }
    }
}
