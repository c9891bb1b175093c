using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>
/// Rotary position embeddings as transformers 4.57 computes them (modeling_rope_utils.py; float32 angles): the inverse
/// frequencies of rope_scaling's type (default, linear, dynamic, yarn, llama3, longrope) and the factor cos and sin are
/// multiplied by. The rotated dimensions are head_dim × partial_rotary_factor (Phi-3); the others pass through.
/// </summary>
internal static class Rotary
{
    public static readonly IReadOnlyList<string> SupportedTypes = ["default", "linear", "dynamic", "yarn", "llama3", "longrope"];

    /// <summary>rope_scaling's type; like transformers' config, the older key <c>type</c> wins over <c>rope_type</c>.</summary>
    public static string RopeType(ModelConfig c) =>
        c.RopeScaling?["type"]?.GetValue<string>() ?? c.RopeScaling?["rope_type"]?.GetValue<string>() ?? "default";

    public static float[] InverseFrequencies(ModelConfig c, long? seqLen = null) => Parameters(c, seqLen).InvFreq;

    /// <summary>
    /// Inverse frequencies and attention scaling (yarn's attention factor, 1 otherwise). <paramref name="seqLen"/> is
    /// the current length for dynamic NTK; null means max_position_embeddings, as at initialisation.
    /// </summary>
    public static (float[] InvFreq, double AttentionScaling) Parameters(ModelConfig c, long? seqLen = null)
    {
        int dim = RotaryDim(c);
        double[] Plain(double theta) => [.. Enumerable.Range(0, dim / 2).Select(i => 1.0 / Math.Pow(theta, 2.0 * i / dim))];
        var scaling = c.RopeScaling;
        double Get(string name, double fallback) => Number(scaling?[name]) ?? fallback;
        double Factor() => Get("factor", double.NaN) is var f && !double.IsNaN(f) ? f
            : throw new InvalidDataException($"rope_scaling type '{RopeType(c)}' needs a 'factor'.");

        var inv = Plain(c.RopeTheta);
        double attentionScaling = 1;
        string type = RopeType(c);
        switch (type)
        {
            case "default":
                break;
            case "linear":
                inv = [.. inv.Select(f => f / Get("factor", 1))];
                break;
            case "dynamic":
            {
                // transformers 4.57 scales against config.max_position_embeddings (rope_scaling's
                // original_max_position_embeddings is still a TODO there); at or below it this is plain rope.
                double factor = Factor(), max = MaxPositions(c), len = Math.Max(seqLen ?? 0, max);
                inv = Plain(c.RopeTheta * Math.Pow(factor * len / max - (factor - 1), dim / (dim - 2.0)));
                break;
            }
            case "yarn":
                (inv, attentionScaling) = Yarn(inv, dim, c.RopeTheta, Factor(),
                    Get("original_max_position_embeddings", 0) is > 0 and var o ? o : MaxPositions(c), scaling!);
                break;
            case "llama3":
            {
                double factor = Get("factor", 8), low = Get("low_freq_factor", 1), high = Get("high_freq_factor", 4);
                double oldContext = Get("original_max_position_embeddings", 8192);
                double lowWavelen = oldContext / low, highWavelen = oldContext / high;
                inv = [.. inv.Select(f =>
                {
                    double wavelen = 2 * Math.PI / f;
                    if (wavelen < highWavelen) return f;
                    if (wavelen > lowWavelen) return f / factor;
                    double smooth = (oldContext / wavelen - low) / (high - low);
                    return (1 - smooth) * f / factor + smooth * f;
                })];
                break;
            }
            case "longrope":
                (inv, attentionScaling) = LongRope(c, dim, seqLen, scaling!);
                break;
            default:
                throw new NotSupportedException($"rope_scaling type '{type}' is not supported (supported: {string.Join(", ", SupportedTypes)}).");
        }
        return ([.. inv.Select(f => (float)f)], attentionScaling);
    }

    private static double? Number(JsonNode? n) => ConfigReader.Number(n);

    /// <summary>The rotated dimensions of a head: int(head_dim × partial_rotary_factor).</summary>
    public static int RotaryDim(ModelConfig c) => (int)(c.HeadDim * c.PartialRotaryFactor);

    /// <summary>
    /// LongRoPE (Phi-3) as transformers 4.57's _compute_longrope_parameters: inverse frequencies divided per dimension
    /// by short_factor, or by long_factor once the sequence is longer than original_max_position_embeddings; the
    /// attention factor √(1 + ln(factor) / ln(original)) with factor = max_position_embeddings / original (when the
    /// config has original_max_position_embeddings, else rope_scaling's factor), unless attention_factor is given.
    /// </summary>
    private static (double[] InvFreq, double AttentionFactor) LongRope(ModelConfig c, int dim, long? seqLen, JsonObject s)
    {
        double[] Factors(string name)
        {
            var list = (s[name] as JsonArray)?.Select(Number).ToList();
            if (list is null || list.Any(f => f is null) || list.Count != dim / 2)
                throw new InvalidDataException($"rope_scaling '{name}' must be a list of {dim / 2} numbers (rotary dimension {dim} / 2) for longrope.");
            return [.. list.Select(f => f!.Value)];
        }
        double[] shortFactor = Factors("short_factor"), longFactor = Factors("long_factor");
        double original, factor;
        if (c.OriginalMaxPositionEmbeddings is int o)
        {
            original = o;
            factor = (double)MaxPositions(c) / o;
        }
        else
        {
            original = MaxPositions(c);
            factor = Number(s["factor"]) ?? throw new InvalidDataException("rope_scaling type 'longrope' needs a 'factor' when the config has no original_max_position_embeddings.");
        }
        double attention = Number(s["attention_factor"]) ?? (factor <= 1 ? 1 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(original)));
        var ext = seqLen is long len && len > original ? longFactor : shortFactor;
        // float32 as transformers: 1 / (ext · base^(2i/dim)).
        var inv = Enumerable.Range(0, dim / 2).Select(i => 1.0 / (float)((float)ext[i] * (float)Math.Pow(c.RopeTheta, (float)(2 * i) / dim))).ToArray();
        return (inv, attention);
    }

    private static int MaxPositions(ModelConfig c) => c.MaxPositionEmbeddings > 0 ? c.MaxPositionEmbeddings
        : throw new InvalidDataException($"rope_scaling type '{RopeType(c)}' needs max_position_embeddings.");

    /// <summary>
    /// YaRN: high frequencies (more than beta_fast rotations over the original context) kept, low ones (fewer than
    /// beta_slow) divided by factor, a linear ramp over the dimensions in between.
    /// </summary>
    private static (double[] InvFreq, double AttentionFactor) Yarn(double[] inv, int dim, double theta, double factor, double originalMax, JsonObject s)
    {
        double? Opt(string name) => Number(s[name]);
        static double MScale(double scale, double m = 1) => scale <= 1 ? 1 : 0.1 * m * Math.Log(scale) + 1;
        // Python's `get(...) or default`: 0 counts as absent.
        double betaFast = Opt("beta_fast") is { } bf and not 0 ? bf : 32, betaSlow = Opt("beta_slow") is { } bs and not 0 ? bs : 1;
        double attention = Opt("attention_factor")
            ?? (Opt("mscale") is { } m and not 0 && Opt("mscale_all_dim") is { } mAll and not 0
                ? MScale(factor, m) / MScale(factor, mAll)
                : MScale(factor));
        bool truncate = s["truncate"] is not JsonValue t || t.GetValue<bool>();

        double CorrectionDim(double rotations) => dim * Math.Log(originalMax / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));
        double low = CorrectionDim(betaFast), high = CorrectionDim(betaSlow);
        if (truncate) (low, high) = (Math.Floor(low), Math.Ceiling(high));
        (low, high) = (Math.Max(low, 0), Math.Min(high, dim - 1));
        if (low == high) high += 0.001;

        var blended = inv.Select((f, i) =>
        {
            double extrapolation = 1 - Math.Clamp((i - low) / (high - low), 0, 1);
            return f / factor * (1 - extrapolation) + f * extrapolation;
        });
        return ([.. blended], attention);
    }

    /// <summary>cos and sin [B, 1, T, D] in float32 for position ids [B, T], times the attention scaling.</summary>
    public static (Tensor cos, Tensor sin) CosSin(float[] invFreq, Tensor positionIds, double attentionScaling = 1)
    {
        var freq = tensor(invFreq, device: positionIds.device);
        var angles = positionIds.to_type(ScalarType.Float32).unsqueeze(-1) * freq; // [B, T, D/2]
        var emb = cat([angles, angles], -1).unsqueeze(1);
        return attentionScaling == 1 ? (emb.cos(), emb.sin()) : (emb.cos() * attentionScaling, emb.sin() * attentionScaling);
    }

    /// <summary>
    /// x: (batch, heads, seq, head_dim), cos/sin: (batch, 1, seq, rotary_dim) → (batch, heads, seq, head_dim): the first
    /// rotary_dim dimensions rotated (rotate_half), the rest passed through (partial rotary).
    /// </summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        long dim = cos.shape[^1];
        if (dim < x.shape[^1])
            return cat([Apply(x[.., .., .., ..(int)dim], cos, sin), x[.., .., .., (int)dim..]], -1);
        long half = dim / 2;
        var rotated = cat([-x[.., .., .., (int)half..], x[.., .., .., ..(int)half]], -1);
        return x * cos + rotated * sin;
    }
}

/// <summary>
/// A model's rotary frequencies over time, as transformers' RotaryEmbedding with dynamic_rope_update: fixed for most
/// types; dynamic NTK grows them with the longest sequence seen and resets below max_position_embeddings; longrope
/// switches to the long factors beyond original_max_position_embeddings and back.
/// </summary>
internal sealed class RotaryFrequencies
{
    private readonly ModelConfig _config;
    private readonly string _type;
    private readonly float[] _originalInvFreq;
    private readonly double _attentionScaling;
    private float[] _invFreq;
    private float[]? _longInvFreq;
    private long _maxSeqLenCached;

    public RotaryFrequencies(ModelConfig c)
    {
        _config = c;
        _type = Rotary.RopeType(c);
        (_invFreq, _attentionScaling) = Rotary.Parameters(c);
        _originalInvFreq = _invFreq;
        _maxSeqLenCached = c.MaxPositionEmbeddings;
    }

    /// <summary>
    /// What every layer of a rotary decoder needs for one forward pass: the padding mask (batch, past + seq), the
    /// layers' additive masks, and cos/sin (batch, 1, seq, rotary_dim) of the position ids (from the mask when null).
    /// </summary>
    public (LayerMasks Masks, Tensor Cos, Tensor Sin) Prepare(Tensor input, Tensor? attentionMask, Tensor? positionIds, long past)
    {
        long time = input.shape[1]; // input: ids (batch, seq) or embeddings (batch, seq, hidden)
        var mask = Attention.FullMask(input, attentionMask, past); // (batch, past + seq)
        positionIds ??= Attention.PositionsFromMask(mask, time);      // (batch, seq)
        var (cos, sin) = CosSin(positionIds);
        return (new LayerMasks(mask, time, Precision.Compute, _config), cos, sin);
    }

    /// <summary>positionIds: (batch, seq) → cos, sin: (batch, 1, seq, rotary_dim) float32, after updating the frequencies.</summary>
    public (Tensor Cos, Tensor Sin) CosSin(Tensor positionIds)
    {
        if (_type is "dynamic" or "longrope") Update(positionIds);
        return Rotary.CosSin(_invFreq, positionIds, _attentionScaling);
    }

    private void Update(Tensor positionIds)
    {
        using var maxPosition = positionIds.max();
        long seqLen = maxPosition.ToInt64() + 1;
        if (_type == "longrope")
        {
            // The attention scaling stays the one computed at initialisation, as in transformers.
            long original = _config.OriginalMaxPositionEmbeddings ?? _config.MaxPositionEmbeddings;
            _invFreq = seqLen > original ? _longInvFreq ??= Rotary.InverseFrequencies(_config, original + 1) : _originalInvFreq;
            return;
        }
        long max = _config.MaxPositionEmbeddings;
        if (seqLen > _maxSeqLenCached)
        {
            _invFreq = Rotary.InverseFrequencies(_config, seqLen);
            _maxSeqLenCached = seqLen;
        }
        if (seqLen < max && _maxSeqLenCached > max)
        {
            _invFreq = _originalInvFreq;
            _maxSeqLenCached = max;
        }
    }
}
