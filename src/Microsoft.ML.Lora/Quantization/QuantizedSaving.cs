using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>
/// What transformers' <c>save_pretrained</c> writes for a model with bitsandbytes layers: each quantized linear's own
/// state dict (<c>Linear4bit</c>: weight, weight.absmax, weight.quant_map, weight.nested_*, weight.quant_state.*;
/// <c>Linear8bitLt</c>: weight, SCB, weight_format), every other parameter as it is, and the
/// <c>quantization_config</c> the model was loaded with, so that the folder loads back as a pre-quantized checkpoint
/// (<see cref="QuantizedLoading"/>).
/// </summary>
internal static class QuantizedSaving
{
    /// <summary>The quantized linear layers of <paramref name="model"/> by their module path.</summary>
    public static List<(string Path, IQuantizedLinear Layer)> Layers(CausalLm model) =>
        model.named_modules().Where(m => m.module is IQuantizedLinear).Select(m => (m.name, (IQuantizedLinear)m.module)).ToList();

    /// <summary>
    /// Throws <see cref="InvalidOperationException"/> when the saved folder would not load back as this model: quantized
    /// layers without a quantization config, a layer of the other kind (4-bit vs 8-bit), a quantized layer the config
    /// skips, or a float linear the config would quantize on loading (the loader quantizes exactly the modules the
    /// config converts, so any of these would fail to load or load as a different model).
    /// </summary>
    public static void CheckSavable(CausalLm model, BitsAndBytesConfig? config, List<(string Path, IQuantizedLinear Layer)> layers)
    {
        if (config is null)
        {
            if (layers.Count > 0)
                throw new InvalidOperationException(
                    $"The model holds quantized layers ('{layers[0].Path}') but no quantization config to write into config.json; load it with ModelLoadOptions.QuantizationConfig.");
            return;
        }
        string kind = config.LoadIn4bit ? "4-bit (load_in_4bit)" : "8-bit (load_in_8bit)";
        foreach (var (path, layer) in layers)
        {
            if (config.LoadIn4bit != layer is Linear4bit)
                throw new InvalidOperationException($"The quantized layer '{path}' is a {layer.GetType().Name}, but the model's quantization_config is {kind}: the saved checkpoint would not load.");
            if (!config.Converts(path))
                throw new InvalidOperationException(
                    $"The quantized layer '{path}' is in the model's llm_int8_skip_modules [{string.Join(", ", config.ModulesToNotConvert)}]: the saved checkpoint would not load.");
        }
        if (model.named_modules().FirstOrDefault(m => m.module is Linear or Conv1D && config.Converts(m.name)).name is { } floatPath)
            throw new InvalidOperationException(
                $"The linear layer '{floatPath}' is not quantized, but the model's quantization_config ({kind}) quantizes it: loading the saved checkpoint would quantize it, giving a different model.");
    }

    /// <summary>
    /// The tensors of model.safetensors: each quantized layer's bitsandbytes state dict under its path, then every other
    /// parameter, a shared (tied) one once under its first name. Tensors made here (the quant-state JSON bytes,
    /// weight_format) belong to the caller's dispose scope.
    /// </summary>
    public static List<KeyValuePair<string, Tensor>> StateDict(CausalLm model, List<(string Path, IQuantizedLinear Layer)> layers)
    {
        var quantized = layers.Select(l => l.Path).ToHashSet(StringComparer.Ordinal);
        var seen = new HashSet<IntPtr>();
        var tensors = model.named_parameters()
            .Where(p => !quantized.Contains(Owner(p.name)) && seen.Add(p.parameter.Handle))
            .Select(p => KeyValuePair.Create(p.name, (Tensor)p.parameter)).ToList();
        foreach (var (path, layer) in layers)
            tensors.AddRange(layer.QuantizedStateDict().Select(t => KeyValuePair.Create($"{path}.{t.Key}", t.Value)));
        return tensors;
    }

    /// <summary>
    /// The model's dtype as transformers' <c>get_parameter_dtype</c> gives it for config.json: the first floating-point
    /// parameter's (the packed uint8 / int8 weights are not), else Float32.
    /// </summary>
    public static ScalarType FloatDType(CausalLm model) =>
        model.parameters().Select(p => p.dtype)
            .FirstOrDefault(t => t is ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16 or ScalarType.Float64, ScalarType.Float32);

    private static string Owner(string parameter) => parameter.LastIndexOf('.') is var dot and > 0 ? parameter[..dot] : "";
}
