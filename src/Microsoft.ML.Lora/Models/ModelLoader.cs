using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
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

    /// <summary>
    /// Whether weights used straight from the memory-mapped file (stored dtype = <see cref="DType"/>, on the CPU) are read
    /// into memory before the load returns: true (default), since the first forward pass reads every one of them anyway,
    /// so the load's time and resident memory are the model's and the first step does not pay for the file. False leaves
    /// the pages unread until first use, as transformers does (a load that only inspects the model then reads nothing).
    /// </summary>
    public bool ReadMappedWeights { get; init; } = true;
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
    /// <summary>
    /// Reads config.json, builds the model for its model_type and loads its weights (frozen), without waste: the
    /// modules are built on the meta device (<see cref="EmptyWeights"/>), every tensor of the checkpoint is checked
    /// against them before anything is allocated, then each parameter is created once, from the checkpoint, in its
    /// target dtype and device (<see cref="LoadWeights"/>).
    /// </summary>
    public static CausalLm Load(string folder, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        var device = ResolveDevice(options.Device);
        ValidateDType(options.DType, options.ComputeDType);
        var config = ModelConfig.Load(Path.Combine(folder, "config.json"));
        using var checkpoint = CheckpointFolder.Open(folder);
        var model = EmptyWeights.Create(() => ModelFactory.Create(config));
        try
        {
            // Quantized linears are created from the checkpoint first (quantize while loading: the float weight exists
            // one tensor at a time); everything else is checked, then created once, by LoadWeights.
            var quantization = Quantization.QuantizedLoading.Effective(checkpoint, config, options.QuantizationConfig);
            var quantized = quantization is null ? null : Quantization.QuantizedLoading.Apply(model, checkpoint, quantization, options.DType, device);
            LoadWeights(model, checkpoint, options.DType, device, quantized, options.ReadMappedWeights);
            model.QuantizationConfig = quantization;
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
        // A missing native runtime, or a libstdc++ too old for it, fails here: said as such, not as a bad device name.
        Native.NativeRuntime.EnsureLoaded(name);
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
    /// Creates every parameter of <paramref name="model"/> (built on the meta device, or any device) from
    /// <paramref name="checkpoint"/> in <paramref name="dtype"/> on <paramref name="device"/>, one tensor at a time. All
    /// names and shapes are checked first, from the safetensors headers alone, so a checkpoint that does not fit fails
    /// with every missing, unexpected and mis-shaped tensor named before any memory is allocated. Where the stored dtype
    /// is <paramref name="dtype"/> on the CPU, the parameter is the memory-mapped file itself (no copy); otherwise it
    /// is converted straight from the mapped bytes. Names in <paramref name="alreadyLoaded"/> (model parameters and
    /// checkpoint tensors that quantization loaded) are skipped.
    /// </summary>
    internal static void LoadWeights(CausalLm model, CheckpointFolder checkpoint, ScalarType dtype, Device device, IReadOnlySet<string>? alreadyLoaded = null,
        bool readMapped = false)
    {
        var source = new WeightSource(checkpoint, readMapped);
        var modules = OwnersOfParameters(model).ToList();
        var missing = new List<string>();
        var mismatched = new List<string>();
        foreach (var (prefix, module) in modules)
        {
            foreach (var (local, p) in module.named_parameters(recurse: false))
            {
                string name = Join(prefix, local);
                if (alreadyLoaded?.Contains(name) == true) continue;
                if (source.Resolve(name) is not { } stored) { missing.Add(name); continue; }
                var shape = checkpoint.Info(stored).Shape;
                if (!shape.SequenceEqual(p.shape))
                    mismatched.Add($"'{name}': the model expects [{string.Join(", ", p.shape)}], the checkpoint has [{string.Join(", ", shape)}]");
            }
        }
        bool tied = model.Config.TieWordEmbeddings && model.named_parameters().All(p => p.name != "lm_head.weight");
        var unexpected = checkpoint.Names
            .Where(n => !source.IsUsed(n) && !(alreadyLoaded?.Contains(n) ?? false) && !IsIgnorable(n) && !(tied && n == "lm_head.weight"))
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
        foreach (var (prefix, module) in modules)
        {
            foreach (var (local, _) in module.named_parameters(recurse: false).ToList())
                if (alreadyLoaded?.Contains(Join(prefix, local)) != true)
                    ModuleParameters.Replace(module, local, new Parameter(source.Read(Join(prefix, local), dtype, device), requires_grad: false));
        }
    }

    /// <summary>The model and each of its submodules that owns parameters itself, with its dotted name ("" for the model).</summary>
    private static IEnumerable<(string Prefix, nn.Module Module)> OwnersOfParameters(nn.Module model) =>
        new[] { ("", model) }.Concat(model.named_modules().Select(m => (m.name, m.module)))
            .Where(m => m.Item2.named_parameters(recurse: false).Any());

    private static string Join(string prefix, string name) => prefix.Length == 0 ? name : $"{prefix}.{name}";
}

/// <summary>
/// The checkpoint as the loader reads it: model parameter names resolved to stored names (checkpoints of the bare
/// model, such as openai-community/gpt2, lack the "transformer." / "model." prefix), and the names read so far.
/// </summary>
internal sealed class WeightSource(CheckpointFolder checkpoint, bool readMapped = false)
{
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    /// <summary>The checkpoint.</summary>
    public CheckpointFolder Checkpoint => checkpoint;

    /// <summary>The stored name of model parameter <paramref name="name"/>, or null when the checkpoint lacks it; marks it used.</summary>
    public string? Resolve(string name)
    {
        string? stored = null;
        if (checkpoint.Contains(name)) stored = name;
        else
        {
            int dot = name.IndexOf('.');
            if (dot > 0 && name[..dot] is "transformer" or "model" && checkpoint.Contains(name[(dot + 1)..])) stored = name[(dot + 1)..];
        }
        if (stored is not null) _used.Add(stored);
        return stored;
    }

    /// <summary>Whether a stored name was resolved.</summary>
    public bool IsUsed(string stored) => _used.Contains(stored);

    /// <summary>
    /// Model parameter <paramref name="name"/> in <paramref name="dtype"/> on <paramref name="device"/>: the
    /// memory-mapped bytes themselves when they are already that (CPU, same dtype; their pages read at once when the
    /// source was made to read mapped weights), else a converted copy.
    /// </summary>
    public Tensor Read(string name, ScalarType dtype, Device device)
    {
        string stored = Resolve(name) ?? throw new KeyNotFoundException($"Tensor '{name}' is not in the checkpoint in '{checkpoint.Folder}'.");
        var info = checkpoint.Info(stored);
        if (info.DType.ToScalarType() != dtype || device.type != DeviceType.CPU) return checkpoint.Load(stored, dtype, device);
        var mapped = checkpoint.Map(stored);
        if (readMapped) SafeTensorsFile.ReadPages(mapped);
        return mapped;
    }
}
