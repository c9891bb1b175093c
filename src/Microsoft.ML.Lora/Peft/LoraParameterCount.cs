using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Peft;

/// <summary>Trainable-parameter count of a LoRA configuration computed from a <see cref="ModelConfig"/> alone, without building the model.</summary>
internal static class LoraParameterCount
{
    /// <summary>The linear layers of one block of each architecture, as (path under the block, in, out).</summary>
    public static List<(string Path, long In, long Out)> BlockLinears(ModelConfig c)
    {
        long h = c.HiddenSize, i = c.IntermediateSize, q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKeyValueHeads * c.HeadDim;
        return c.ModelType switch
        {
            "gpt2" => [("attn.c_attn", h, 3 * h), ("attn.c_proj", h, h), ("mlp.c_fc", h, i), ("mlp.c_proj", i, h)],
            "bloom" => [("self_attention.query_key_value", h, 3 * h), ("self_attention.dense", h, h), ("mlp.dense_h_to_4h", h, i), ("mlp.dense_4h_to_h", i, h)],
            "llama" or "mistral" or "qwen2" => [("self_attn.q_proj", h, q), ("self_attn.k_proj", h, kv), ("self_attn.v_proj", h, kv), ("self_attn.o_proj", q, h),
                ("mlp.gate_proj", h, i), ("mlp.up_proj", h, i), ("mlp.down_proj", i, h)],
            _ => throw new NotSupportedException($"Model type '{c.ModelType}' is not supported."),
        };
    }

    /// <summary>Full paths and shapes of all linear layers (lm_head included) of a model with this config.</summary>
    public static List<(string Path, long In, long Out)> AllLinears(ModelConfig c)
    {
        string prefix = c.ModelType is "gpt2" or "bloom" ? "transformer.h" : "model.layers";
        var list = new List<(string, long, long)>();
        for (int l = 0; l < c.NumLayers; l++)
            foreach (var (p, i, o) in BlockLinears(c)) list.Add(($"{prefix}.{l}.{p}", i, o));
        list.Add(("lm_head", c.HiddenSize, c.VocabSize));
        return list;
    }

    /// <summary>Number of LoRA parameters <paramref name="config"/> adds to a model of <paramref name="model"/>'s shape (bias "none").</summary>
    public static long Trainable(ModelConfig model, LoraConfig config)
    {
        var linears = AllLinears(model);
        var selected = LoraModel.SelectTargets(linears.Select(l => l.Path), config, model.ModelType).ToHashSet();
        return linears.Where(l => selected.Contains(l.Path)).Sum(l => (long)config.R * (l.In + l.Out));
    }
}
