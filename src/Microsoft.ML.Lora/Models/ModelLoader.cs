using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>Where and in which precision to load a model.</summary>
internal sealed record ModelLoadOptions
{
    /// <summary>Floating type of the parameters: Float32 (default), BFloat16 or Float16.</summary>
    public ScalarType DType { get; init; } = ScalarType.Float32;

    /// <summary>Device: "cpu" (default), "cuda", "cuda:1".</summary>
    public string Device { get; init; } = "cpu";

    /// <summary>
    /// Arithmetic of the matrix multiplications, as bitsandbytes' compute_dtype: null (default) for the weights' own
    /// dtype, as transformers computes; Float32 over BFloat16 weights for float32 arithmetic on half the memory
    /// (<see cref="CausalLm.Float32Arithmetic"/>).
    /// </summary>
    public ScalarType? ComputeDType { get; init; }
}

/// <summary>A checkpoint that does not fit the model built from its config.json; the message names every tensor at fault.</summary>
internal sealed class CheckpointMismatchException(string message, IReadOnlyList<string> missing, IReadOnlyList<string> unexpected,
    IReadOnlyList<string> shapeMismatches) : IOException(message)
{
    public IReadOnlyList<string> Missing { get; } = missing;
    public IReadOnlyList<string> Unexpected { get; } = unexpected;
    public IReadOnlyList<string> ShapeMismatches { get; } = shapeMismatches;
}

/// <summary>Loads a Hugging Face model folder (config.json + model.safetensors or a sharded index).</summary>
internal static class ModelLoader
{
    /// <summary>Reads config.json, builds the model for its model_type and loads its weights (frozen).</summary>
    public static CausalLm Load(string folder, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        var device = ResolveDevice(options.Device);
        ValidateDType(options.DType, options.ComputeDType);
        var config = ModelConfig.Load(Path.Combine(folder, "config.json"));
        using var checkpoint = CheckpointFolder.Open(folder);
        var model = ModelFactory.Create(config);
        try
        {
            model.to(options.DType).to(device);
            LoadWeights(model, checkpoint);
            model.Float32Arithmetic = options.ComputeDType == ScalarType.Float32 && options.DType != ScalarType.Float32;
            ModelFactory.Freeze(model);
            model.eval();
            return model;
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    internal static Device ResolveDevice(string name)
    {
        if (name.StartsWith("cuda", StringComparison.OrdinalIgnoreCase) && !cuda.is_available())
            throw new InvalidOperationException(
                $"Device '{name}' was requested but CUDA is not available (torch.cuda.is_available() is false): reference the TorchSharp-cuda-linux or TorchSharp-cuda-windows runtime package and check the NVIDIA driver, or load on 'cpu'.");
        Device device;
        try { device = torch.device(name); }
        catch (Exception e) { throw new ArgumentException($"'{name}' is not a device (use cpu, cuda or cuda:N).", e); }
        if (device.type == DeviceType.CUDA && !cuda.is_available())
            throw new InvalidOperationException(
                $"Device '{name}' was requested but CUDA is not available (torch.cuda.is_available() is false): reference the TorchSharp-cuda-linux or TorchSharp-cuda-windows runtime package and check the NVIDIA driver, or load on 'cpu'.");
        return device;
    }

    private static void ValidateDType(ScalarType dtype, ScalarType? compute)
    {
        if (dtype is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"dtype {dtype} is not supported for model weights; use Float32, BFloat16 or Float16.");
        if (compute is { } c && c != dtype && !(c == ScalarType.Float32 && dtype == ScalarType.BFloat16))
            throw new ArgumentException($"compute dtype {c} over {dtype} weights is not supported; use the weights' dtype, or Float32 over BFloat16 weights.");
    }

    /// <summary>Names in checkpoints that are not parameters (old GPT-2's causal mask buffers, rotary inv_freq).</summary>
    internal static bool IsIgnorable(string name) =>
        name.EndsWith(".attn.bias", StringComparison.Ordinal) || name.EndsWith(".attn.masked_bias", StringComparison.Ordinal)
        || name.EndsWith("rotary_emb.inv_freq", StringComparison.Ordinal);

    /// <summary>Copies every parameter from <paramref name="checkpoint"/>; throws naming all missing, unexpected and mis-shaped tensors.</summary>
    internal static void LoadWeights(CausalLm model, CheckpointFolder checkpoint)
    {
        var missing = new List<string>();
        var mismatched = new List<string>();
        var used = new HashSet<string>(StringComparer.Ordinal);
        var parameters = model.named_parameters().ToList();
        // Checkpoints of the bare model (openai-community/gpt2) lack the "transformer." / "model." prefix.
        string? Resolve(string name)
        {
            if (checkpoint.Contains(name)) return name;
            int dot = name.IndexOf('.');
            return dot > 0 && name[..dot] is "transformer" or "model" && checkpoint.Contains(name[(dot + 1)..]) ? name[(dot + 1)..] : null;
        }
        foreach (var (name, p) in parameters)
        {
            if (Resolve(name) is not { } source) { missing.Add(name); continue; }
            used.Add(source);
            var shape = checkpoint.Info(source).Shape;
            if (!shape.SequenceEqual(p.shape))
                mismatched.Add($"'{name}': the model expects [{string.Join(", ", p.shape)}], the checkpoint has [{string.Join(", ", shape)}]");
        }
        bool tied = model.Config.TieWordEmbeddings && parameters.All(p => p.name != "lm_head.weight");
        var unexpected = checkpoint.Names
            .Where(n => !used.Contains(n) && !IsIgnorable(n) && !(tied && n == "lm_head.weight"))
            .OrderBy(n => n, StringComparer.Ordinal).ToList();
        if (missing.Count + unexpected.Count + mismatched.Count > 0)
        {
            var parts = new List<string>();
            if (missing.Count > 0) parts.Add($"missing tensors: {string.Join(", ", missing.Select(n => $"'{n}'"))}");
            if (unexpected.Count > 0) parts.Add($"unexpected tensors: {string.Join(", ", unexpected.Select(n => $"'{n}'"))}");
            if (mismatched.Count > 0) parts.Add($"shape mismatches: {string.Join("; ", mismatched)}");
            throw new CheckpointMismatchException(
                $"The checkpoint in '{checkpoint.Folder}' does not match the {model.Config.ModelType} model of its config.json: {string.Join(". ", parts)}.",
                missing, unexpected, mismatched);
        }
        using var _ = no_grad();
        foreach (var (name, p) in parameters)
        {
            using var loaded = checkpoint.Load(Resolve(name)!, p.dtype, p.device);
            p.copy_(loaded);
        }
    }
}

/// <summary>Builds models from a config: empty for loading, random for tests and benchmarks; saves them as Hugging Face folders.</summary>
internal static class ModelFactory
{
    /// <summary>The module for <see cref="ModelConfig.ModelType"/>, float32 on the CPU, default-initialised.</summary>
    public static CausalLm Create(ModelConfig config) => config.ModelType switch
    {
        "gpt2" => new Gpt2ForCausalLm(config),
        "bloom" => new BloomForCausalLm(config),
        "llama" or "mistral" or "qwen2" => new LlamaForCausalLm(config),
        _ => throw new NotSupportedException($"model_type '{config.ModelType}' is not supported."),
    };

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
        Directory.CreateDirectory(folder);
        var json = ToJson(model.Config);
        File.WriteAllText(Path.Combine(folder, "config.json"), json.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        SafeTensorsWriter.Save(Path.Combine(folder, CheckpointFolder.SingleFile),
            model.named_parameters().Select(p => KeyValuePair.Create(p.name, (Tensor)p.parameter)),
            new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>config.json for <paramref name="c"/>: its raw JSON with the mapped fields written under the architecture's names.</summary>
    public static JsonObject ToJson(ModelConfig c)
    {
        var json = (JsonObject)c.Raw.DeepClone();
        json["model_type"] = c.ModelType;
        json["vocab_size"] = c.VocabSize;
        json["bos_token_id"] = c.BosTokenId;
        json["eos_token_id"] = c.EosTokenId;
        json["pad_token_id"] = c.PadTokenId;
        json["tie_word_embeddings"] = c.TieWordEmbeddings;
        switch (c.ModelType)
        {
            case "gpt2":
                json["n_embd"] = c.HiddenSize; json["n_layer"] = c.NumLayers; json["n_head"] = c.NumHeads;
                json["n_inner"] = c.IntermediateSize; json["n_positions"] = c.MaxPositionEmbeddings;
                json["layer_norm_epsilon"] = c.NormEpsilon; json["activation_function"] = c.HiddenAct;
                break;
            case "bloom":
                json["hidden_size"] = c.HiddenSize; json["n_layer"] = c.NumLayers; json["n_head"] = c.NumHeads;
                json["layer_norm_epsilon"] = c.NormEpsilon;
                break;
            default:
                json["hidden_size"] = c.HiddenSize; json["num_hidden_layers"] = c.NumLayers; json["num_attention_heads"] = c.NumHeads;
                json["num_key_value_heads"] = c.NumKeyValueHeads; json["head_dim"] = c.HeadDim; json["intermediate_size"] = c.IntermediateSize;
                json["max_position_embeddings"] = c.MaxPositionEmbeddings; json["rms_norm_eps"] = c.NormEpsilon;
                json["hidden_act"] = c.HiddenAct; json["rope_theta"] = c.RopeTheta;
                json["rope_scaling"] = c.RopeScaling?.DeepClone();
                json["attention_bias"] = c.AttentionBias; json["mlp_bias"] = c.MlpBias;
                if (c.SlidingWindow is int w) { json["sliding_window"] = w; json["use_sliding_window"] = true; }
                break;
        }
        return json;
    }
}
