using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// Trainable parameters of each PEFT method computed from a <see cref="ModelConfig"/> alone, without building the
/// model (what print_trainable_parameters reports once the adapter is added). docs/peft-methods.md lists them for BLOOM-7b1.
/// </summary>
public static class PeftParameterCount
{
    /// <summary>
    /// LoRA: r · (in + out) per target; DoRA (<see cref="LoraConfig.UseDora"/>) adds a magnitude per output feature.
    /// Bias mode "none".
    /// </summary>
    public static long Lora(ModelConfig model, LoraConfig config)
    {
        var linears = LoraParameterCount.AllLinears(model);
        var selected = LoraModel.SelectTargets(linears.Select(l => l.Path), config, model.ModelType).ToHashSet();
        return linears.Where(l => selected.Contains(l.Path)).Sum(l => (long)config.R * (l.In + l.Out) + (config.UseDora ? l.Out : 0));
    }

    /// <summary>IA3: one value per output feature of a target, per input feature of a feed-forward target.</summary>
    public static long IA3(ModelConfig model, IA3Config config)
    {
        var targets = config.TargetModules ?? IA3Config.DefaultTargets(model.ModelType);
        var feedforward = config.FeedforwardModules ?? (config.TargetModules is null ? IA3Config.DefaultFeedforward(model.ModelType) : []);
        return LoraParameterCount.AllLinears(model)
            .Where(l => targets.Any(t => LoraConfig.SuffixMatch(l.Path, t)) && !ExcludedModules.IsExcluded(config.ExcludeModules, config.ExcludeModulesRegex, l.Path))
            .Sum(l => feedforward.Any(f => l.Path.EndsWith(f, StringComparison.Ordinal)) ? l.In : l.Out);
    }

    /// <summary>
    /// Prompt tuning: n × token_dim. P-tuning: that plus its MLP (three linears with biases, token_dim → h → h →
    /// token_dim). Prefix tuning: n × 2 · layers · token_dim, or with the projection n × token_dim plus Linear(token_dim,
    /// h) and Linear(h, 2 · layers · token_dim) with biases (token_dim from the key/value heads, as PEFT sizes it).
    /// </summary>
    public static long PromptLearning(ModelConfig model, PromptLearningConfig config)
    {
        var c = config.Resolve(model);
        long n = c.NumVirtualTokens, d = c.TokenDim!.Value, kv = 2L * c.NumLayers!.Value * d;
        static long Linear(long i, long o) => i * o + o;
        return c switch
        {
            PromptEncoderConfig p => n * d + Linear(d, p.EncoderHiddenSize!.Value) + Linear(p.EncoderHiddenSize!.Value, p.EncoderHiddenSize!.Value) + Linear(p.EncoderHiddenSize!.Value, d),
            PrefixTuningConfig { PrefixProjection: true } p => n * d + Linear(d, p.EncoderHiddenSize!.Value) + Linear(p.EncoderHiddenSize!.Value, kv),
            PrefixTuningConfig => n * kv,
            _ => n * d,
        };
    }
}
