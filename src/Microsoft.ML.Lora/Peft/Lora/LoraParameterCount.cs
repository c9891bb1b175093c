using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Peft;

/// <summary>Trainable-parameter count of a LoRA configuration computed from a <see cref="ModelConfig"/> alone, without building the model.</summary>
internal static class LoraParameterCount
{
    /// <summary>Full paths and shapes of all linear layers (lm_head included) of a model with this config (from its architecture's description).</summary>
    public static List<(string Path, long In, long Out)> AllLinears(ModelConfig c)
    {
        var architecture = c.Architecture;
        var list = new List<(string, long, long)>();
        for (int l = 0; l < c.NumLayers; l++)
            foreach (var (p, i, o) in architecture.BlockLinears(c)) list.Add(($"{architecture.LayersPath}.{l}.{p}", i, o));
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
