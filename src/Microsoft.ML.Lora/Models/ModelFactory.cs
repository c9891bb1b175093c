using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>Builds models from a config: empty for loading, random for tests and benchmarks; saves them as Hugging Face folders.</summary>
internal static class ModelFactory
{
    /// <summary>The module for <see cref="ModelConfig.ModelType"/>, float32 on the CPU, default-initialised.</summary>
    public static CausalLm Create(ModelConfig config) => config.Architecture.Create(config);

    /// <summary>A frozen model with weights N(0, 0.02) (matrices and embeddings), norms 1 and biases 0, reproducible from <paramref name="seed"/>.</summary>
    public static CausalLm CreateRandom(ModelConfig config, long seed, ScalarType dtype = ScalarType.Float32, string device = "cpu")
    {
        var dev = ModelLoader.ResolveDevice(device);
        var model = Create(config);
        // A private generator: the global one is shared with anything else building modules concurrently.
        using (var generator = new torch.Generator((ulong)seed))
        using (no_grad())
        {
            foreach (var (_, p) in model.named_parameters())
                if (p.dim() >= 2) p.normal_(0, 0.02, generator);
        }
        model.to(dtype).to(dev);
        Freeze(model);
        model.eval();
        return model;
    }

    /// <summary>Sets requires_grad = false on every parameter.</summary>
    public static void Freeze(nn.Module model)
    {
        foreach (var p in model.parameters()) p.requires_grad = false;
    }

    /// <summary>Writes config.json and model.safetensors (Hugging Face names; tied lm_head omitted) to <paramref name="folder"/>.</summary>
    public static void Save(CausalLm model, string folder)
    {
        var json = ToJson(model.Config);
        AtomicFolder.Write(folder, tmp => // a kill or a full disk leaves the previous model folder whole
        {
            File.WriteAllText(Path.Combine(tmp, "config.json"), json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            SafeTensorsWriter.Save(Path.Combine(tmp, CheckpointFolder.SingleFile),
                model.named_parameters().Select(p => KeyValuePair.Create(p.name, (Tensor)p.parameter)),
                new Dictionary<string, string> { ["format"] = "pt" });
        }, keepOtherEntries: true);
    }

    /// <summary>config.json for <paramref name="c"/>: its raw JSON with the mapped fields written under the architecture's key names.</summary>
    public static JsonObject ToJson(ModelConfig c)
    {
        var json = (JsonObject)c.Raw.DeepClone();
        json["model_type"] = c.ModelType;
        json["vocab_size"] = c.VocabSize;
        json["bos_token_id"] = c.BosTokenId;
        json["eos_token_id"] = c.EosTokenId;
        json["pad_token_id"] = c.PadTokenId;
        json["tie_word_embeddings"] = c.TieWordEmbeddings;
        c.Architecture.WriteConfig(c, json);
        return json;
    }
}
