using System.Runtime.CompilerServices;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Generation;

/// <summary>Settings of one generate call, with the names and semantics of transformers' <c>GenerationConfig</c>.</summary>
public sealed record GenerationOptions
{
    /// <summary>Number of tokens to generate at most.</summary>
    public int MaxNewTokens { get; init; } = 32;
    /// <summary>Sample (true) or take the arg-max (false).</summary>
    public bool DoSample { get; init; }
    /// <summary>Divides the logits before sampling.</summary>
    public double Temperature { get; init; } = 1.0;
    /// <summary>Keep the k most likely tokens (0 = off).</summary>
    public int TopK { get; init; }
    /// <summary>Keep the smallest set of tokens whose probability reaches p (1 = off).</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>HF repetition penalty: scores of tokens already in the sequence are divided (positive) or multiplied (negative) by it.</summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>Tokens that end a row (null: the model's eos_token_id; empty: none).</summary>
    public IReadOnlyList<int>? EosTokenIds { get; init; }
    /// <summary>Token sequences that end a row when the generated tokens end with one of them.</summary>
    public IReadOnlyList<IReadOnlyList<int>> StopSequences { get; init; } = [];
    /// <summary>
    /// Strings that end a row, as transformers' StopStringCriteria: when one ends within the text of the token just
    /// generated (it may overhang that token's end, and start in earlier tokens), never an occurrence further back.
    /// Needs <see cref="Decode"/>.
    /// </summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    /// <summary>Turns token ids into text, for <see cref="StopStrings"/>.</summary>
    public Func<IReadOnlyList<int>, string>? Decode { get; init; }
    /// <summary>Padding id for left padding and for finished rows (null: the model's pad_token_id, else 0).</summary>
    public int? PadTokenId { get; init; }
    /// <summary>Seed of the sampling generator (null: a generator seeded at random for this call).</summary>
    public long? Seed { get; init; }
    /// <summary>
    /// A sampling generator owned by the caller, used instead of <see cref="Seed"/>: it advances from call to call, so
    /// successive calls draw different samples, and re-seeding it repeats them. Not disposed by the generate call.
    /// </summary>
    public torch.Generator? SamplingGenerator { get; init; }
    /// <summary>Reuse keys and values of earlier steps (true) or re-run the whole sequence each step.</summary>
    public bool UseCache { get; init; } = true;
}

/// <summary>Autoregressive decoding of a <see cref="CausalLm"/> with a KV cache: greedy or sampled, batched with left padding, streaming.</summary>
internal sealed class Generator(CausalLm model)
{
    /// <summary>Generated tokens (prompt excluded) of one prompt.</summary>
    public IReadOnlyList<int> Generate(IReadOnlyList<int> prompt, GenerationOptions? options = null, Action<int>? onToken = null) =>
        Generate([prompt], options, onToken is null ? null : (_, t) => onToken(t))[0];

    /// <summary>Generated tokens (prompts excluded) of each prompt; prompts are left-padded into one batch. <paramref name="onToken"/> gets (row, token) as they come.</summary>
    public IReadOnlyList<IReadOnlyList<int>> Generate(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions? options = null, Action<int, int>? onToken = null)
    {
        options ??= new GenerationOptions();
        var (ids, mask) = LeftPad(prompts, PadId(options), model.Device);
        using var session = new GenerationSession(model, ids, mask, options);
        ids.Dispose();
        mask.Dispose();
        while (session.Step() is { } step)
            for (int r = 0; r < step.Length; r++) if (step[r] is int t) onToken?.Invoke(r, t);
        return session.Generated;
    }

    /// <summary>Like transformers' generate(): [batch, time + new] ids (prompt included; finished rows padded) from left-padded ids and mask.</summary>
    public Tensor Generate(Tensor inputIds, Tensor? attentionMask, GenerationOptions? options = null)
    {
        options ??= new GenerationOptions();
        using var scope = NewDisposeScope();
        attentionMask ??= ones_like(inputIds);
        var device = model.Device;
        using var session = new GenerationSession(model, inputIds.to(ScalarType.Int64, device), attentionMask.to(ScalarType.Int64, device), options);
        while (session.Step() is not null) { }
        return session.Sequences.clone().MoveToOuterDisposeScope();
    }

    /// <summary>Streams the generated tokens of one prompt.</summary>
    public async IAsyncEnumerable<int> StreamAsync(IReadOnlyList<int> prompt, GenerationOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        options ??= new GenerationOptions();
        var (ids, mask) = LeftPad([prompt], PadId(options), model.Device);
        using var session = new GenerationSession(model, ids, mask, options);
        ids.Dispose();
        mask.Dispose();
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var step = session.Step();
            if (step is null) yield break;
            if (step[0] is int t) yield return t;
            await Task.Yield();
        }
    }

    private int PadId(GenerationOptions o) => o.PadTokenId ?? model.Config.PadTokenId ?? 0;

    internal static (Tensor ids, Tensor mask) LeftPad(IReadOnlyList<IReadOnlyList<int>> prompts, int pad, Device device)
    {
        if (prompts.Count == 0 || prompts.Any(p => p.Count == 0)) throw new ArgumentException("Every prompt needs at least one token.", nameof(prompts));
        int length = prompts.Max(p => p.Count);
        var ids = new long[prompts.Count * length];
        var mask = new long[ids.Length];
        for (int r = 0; r < prompts.Count; r++)
        {
            int offset = length - prompts[r].Count;
            for (int i = 0; i < length; i++)
            {
                ids[r * length + i] = i < offset ? pad : prompts[r][i - offset];
                mask[r * length + i] = i < offset ? 0 : 1;
            }
        }
        return (tensor(ids, [prompts.Count, length], device: device), tensor(mask, [prompts.Count, length], device: device));
    }
}

/// <summary>The state of one generate call; each <see cref="Step"/> runs one forward under no_grad in its own dispose scope.</summary>
internal sealed class GenerationSession : IDisposable
{
    private readonly CausalLm _model;
    private readonly GenerationOptions _options;
    private readonly KvCache? _cache;
    private readonly torch.Generator? _rng;
    private readonly torch.Generator? _ownedRng;
    private readonly HashSet<int> _eos;
    private readonly int _pad;
    private readonly List<int>[] _generated;
    private readonly bool[] _finished;
    private Tensor _ids, _mask;
    private int _steps;

    public GenerationSession(CausalLm model, Tensor ids, Tensor mask, GenerationOptions options)
    {
        CheckLength(model, mask, options.MaxNewTokens);
        _model = model;
        _options = options;
        _cache = options.UseCache ? new KvCache(model.Config.NumLayers) : null;
        _ids = ids.alias().DetachFromDisposeScope();
        _mask = mask.alias().DetachFromDisposeScope();
        _eos = [.. options.EosTokenIds ?? (model.Config.EosTokenId is int e ? [e] : [])];
        _pad = options.PadTokenId ?? model.Config.PadTokenId ?? 0;
        int rows = (int)ids.shape[0];
        _generated = [.. Enumerable.Range(0, rows).Select(_ => new List<int>())];
        _finished = new bool[rows];
        // Sampling draws from the caller's generator, else from this call's own one, never torch's global one.
        if (options.SamplingGenerator is null && options.DoSample) _ownedRng = new torch.Generator((ulong)(options.Seed ?? Random.Shared.NextInt64()), ids.device);
        _rng = options.SamplingGenerator ?? _ownedRng;
        if (options.StopStrings.Count > 0 && options.Decode is null)
            throw new ArgumentException("StopStrings need a Decode callback.", nameof(options));
    }

    /// <summary>
    /// Refuses, before any forward pass, a prompt that would run past the positions a model with learned positions
    /// has (GPT-2's n_positions); models with rotary or ALiBi positions have no hard limit.
    /// </summary>
    private static void CheckLength(CausalLm model, Tensor mask, int maxNewTokens)
    {
        if (model.PositionLimit is not int limit || mask.device_type == DeviceType.META) return;
        using var lengths = mask.sum(1).cpu();
        var counts = lengths.to_type(ScalarType.Int64).data<long>().ToArray();
        for (int row = 0; row < counts.Length; row++)
            if (counts[row] + maxNewTokens > limit)
                throw new ArgumentOutOfRangeException(null,
                    $"Prompt {row} has {counts[row]} tokens; with MaxNewTokens {maxNewTokens} it would pass the {limit} positions of the model (n_positions in config.json). Shorten the prompt or lower MaxNewTokens.");
    }

    /// <summary>Prompt and generated ids [batch, time].</summary>
    public Tensor Sequences => _ids;

    /// <summary>Generated tokens of each row (after a row finishes, nothing more is added).</summary>
    public IReadOnlyList<IReadOnlyList<int>> Generated => _generated;

    /// <summary>Generates one token per row; null once every row is finished or the budget is spent. Finished rows give null.</summary>
    public int?[]? Step()
    {
        if (_steps >= _options.MaxNewTokens || _finished.All(f => f)) return null;
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        long time = _ids.shape[1];
        var input = _cache is not null && _cache.Length > 0 ? _ids[.., (int)(time - 1)..] : _ids;
        var positions = Attention.PositionsFromMask(_mask, input.shape[1]);
        var logits = _model.Forward(input, _mask, positions, _cache)[.., -1, ..].to_type(ScalarType.Float32);
        var next = Choose(Process(logits)).cpu();
        var chosen = next.data<long>().ToArray();
        var result = new int?[chosen.Length];
        for (int r = 0; r < chosen.Length; r++)
        {
            if (_finished[r]) { chosen[r] = _pad; continue; }
            int token = (int)chosen[r];
            _generated[r].Add(token);
            result[r] = token;
            if (_eos.Contains(token) || HitsStop(_generated[r])) _finished[r] = true;
        }
        var column = tensor(chosen, [chosen.Length, 1], device: _ids.device);
        var ids = cat([_ids, column], 1).DetachFromDisposeScope();
        var mask = cat([_mask, ones_like(column)], 1).DetachFromDisposeScope();
        _ids.Dispose();
        _mask.Dispose();
        (_ids, _mask) = (ids, mask);
        _steps++;
        return result;
    }

    private Tensor Process(Tensor logits)
    {
        var o = _options;
        if (o.RepetitionPenalty != 1.0)
        {
            var seen = logits.gather(1, _ids);
            seen = where(seen < 0, seen * o.RepetitionPenalty, seen / o.RepetitionPenalty);
            logits = logits.scatter(1, _ids, seen);
        }
        if (!o.DoSample) return logits;
        if (o.Temperature != 1.0) logits = logits / o.Temperature;
        if (o.TopK > 0)
        {
            var kth = logits.topk(Math.Min(o.TopK, (int)logits.shape[1])).values[.., ^1..];
            logits = logits.masked_fill(logits < kth, double.NegativeInfinity);
        }
        if (o.TopP < 1.0)
        {
            var (sorted, indices) = logits.sort(-1, descending: false);
            var cumulative = sorted.softmax(-1).cumsum(-1);
            var remove = cumulative <= 1 - o.TopP;
            remove[.., ^1] = tensor(false);
            logits = logits.masked_fill(remove.scatter(1, indices, remove), double.NegativeInfinity);
        }
        return logits;
    }

    private Tensor Choose(Tensor logits) =>
        _options.DoSample ? multinomial(logits.softmax(-1), 1, generator: _rng).squeeze(1) : logits.argmax(-1);

    private bool HitsStop(List<int> generated)
    {
        foreach (var stop in _options.StopSequences)
            if (stop.Count > 0 && generated.Count >= stop.Count && generated.Skip(generated.Count - stop.Count).SequenceEqual(stop)) return true;
        if (_options.StopStrings.Count > 0)
        {
            var text = _options.Decode!(generated);
            int lastTokenStart = generated.Count > 1 ? _options.Decode!(generated.Take(generated.Count - 1).ToList()).Length : 0;
            if (_options.StopStrings.Any(s => EndsInLastToken(text, lastTokenStart, s))) return true;
        }
        return false;
    }

    /// <summary>
    /// Whether <paramref name="stop"/> occurs in <paramref name="text"/> ending after <paramref name="lastTokenStart"/>
    /// (the length of the text before the last token): it ends within the last token's text, which may overhang it.
    /// An occurrence entirely before the last token does not count (transformers' StopStringCriteria).
    /// </summary>
    internal static bool EndsInLastToken(string text, int lastTokenStart, string stop)
    {
        if (stop.Length == 0) return false;
        int from = Math.Max(0, Math.Min(text.Length, lastTokenStart) - stop.Length + 1);
        return text.IndexOf(stop, from, StringComparison.Ordinal) >= 0;
    }

    public void Dispose()
    {
        _cache?.Dispose();
        _ownedRng?.Dispose();
        _ids.Dispose();
        _mask.Dispose();
    }
}
