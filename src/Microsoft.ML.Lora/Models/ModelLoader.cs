using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>Where and in which precision to load a model (transformers' <c>dtype</c> and <c>device_map</c> of from_pretrained).</summary>
public sealed record ModelLoadOptions
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

    /// <summary>
    /// transformers' quantization_config: quantize the linear layers to 8 or 4 bits while loading (null: none). A
    /// checkpoint saved pre-quantized brings its own, which wins (docs/quantization.md).
    /// </summary>
    public Quantization.BitsAndBytesConfig? QuantizationConfig { get; init; }
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
            var quantization = Quantization.QuantizedLoading.Effective(checkpoint, config, options.QuantizationConfig);
            LoadWeights(model, checkpoint, quantization is null ? null : Quantization.QuantizedLoading.Apply(model, checkpoint, quantization, options.DType, device));
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

    /// <summary>
    /// Copies every parameter from <paramref name="checkpoint"/>, except the names in <paramref name="alreadyLoaded"/> (model
    /// parameters and checkpoint tensors already loaded, by quantization); throws naming all missing, unexpected and
    /// mis-shaped tensors.
    /// </summary>
    internal static void LoadWeights(CausalLm model, CheckpointFolder checkpoint, IReadOnlySet<string>? alreadyLoaded = null)
    {
        var loadedByQuantization = alreadyLoaded ?? new HashSet<string>();
        var missing = new List<string>();
        var mismatched = new List<string>();
        var used = new HashSet<string>(StringComparer.Ordinal);
        var parameters = model.named_parameters().Where(p => !loadedByQuantization.Contains(p.name)).ToList();
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
            .Where(n => !used.Contains(n) && !loadedByQuantization.Contains(n) && !IsIgnorable(n) && !(tied && n == "lm_head.weight"))
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
