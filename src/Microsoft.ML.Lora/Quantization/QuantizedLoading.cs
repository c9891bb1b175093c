using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using Microsoft.ML.Lora.Peft;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>
/// Puts quantized layers into a model while it loads (transformers' Bnb4BitHfQuantizer / Bnb8BitHfQuantizer): each
/// linear module that <see cref="BitsAndBytesConfig"/> converts is replaced by a <see cref="Linear4bit"/> or
/// <see cref="Linear8bitLt"/> built from the checkpoint one tensor at a time, either quantizing the float weight as it is
/// read (and freeing it at once) or reading the state a pre-quantized checkpoint holds.
/// </summary>
internal static class QuantizedLoading
{
    /// <summary>
    /// The quantization in effect: the checkpoint's own <c>quantization_config</c> (a pre-quantized checkpoint; as in
    /// transformers it wins over <paramref name="requested"/>), else <paramref name="requested"/>, else null.
    /// </summary>
    public static BitsAndBytesConfig? Effective(CheckpointFolder checkpoint, ModelConfig config, BitsAndBytesConfig? requested)
    {
        var stored = BitsAndBytesConfig.FromJson(config.Raw["quantization_config"], Path.Combine(checkpoint.Folder, "config.json"));
        var effective = stored ?? requested;
        effective?.Validate();
        return effective;
    }

    /// <summary>
    /// Replaces the linear modules <paramref name="quantization"/> converts by quantized layers on
    /// <paramref name="device"/>, loading their tensors from <paramref name="checkpoint"/>. Returns the names it loaded,
    /// model parameters and checkpoint tensors alike, for the ordinary loader to skip.
    /// </summary>
    public static HashSet<string> Apply(CausalLm model, CheckpointFolder checkpoint, BitsAndBytesConfig quantization, ScalarType dtype, Device device)
    {
        var loaded = new HashSet<string>(StringComparer.Ordinal);
        var targets = model.named_modules()
            .Where(m => m.module is Linear or Conv1D && quantization.Converts(m.name))
            .Select(m => (m.name, (ILinear)m.module)).ToList();
        foreach (var (path, linear) in targets)
        {
            string? Source(string key)
            {
                var name = Resolve(checkpoint, $"{path}.{key}");
                if (name is not null) loaded.Add(name);
                return name;
            }
            Tensor? Read(string key, ScalarType? type = null) => Source(key) is { } name ? checkpoint.Load(name, type, device) : null;

            var bias = linear.bias is null ? null : Read("bias", dtype)
                ?? throw new CheckpointMismatchException($"The checkpoint in '{checkpoint.Folder}' has no '{path}.bias' for the quantized layer '{path}'.", [$"{path}.bias"], [], []);
            nn.Module<Tensor, Tensor> layer;
            try
            {
                layer = quantization.LoadIn4bit
                    ? Load4bit(path, linear, checkpoint, Source, Read, quantization, dtype, bias)
                    : Load8bit(path, linear, checkpoint, Source, Read, dtype, bias);
            }
            catch
            {
                bias?.Dispose();
                throw;
            }
            ModuleSurgery.Replace(model, path, layer);
            ((nn.Module)linear).Dispose();
            loaded.Add($"{path}.weight");
            loaded.Add($"{path}.bias");
            // The float weight and the quantization's temporaries are freed by now; glibc keeps such blocks between the
            // layers it has kept, and over a 7B model those holes added 1.6 GiB to the load's peak. Give them back.
            Native.NativeHeap.Trim();
        }
        return loaded;
    }

    private static Linear4bit Load4bit(string path, ILinear linear, CheckpointFolder checkpoint, Func<string, string?> source,
        Func<string, ScalarType?, Tensor?> read, BitsAndBytesConfig q, ScalarType dtype, Tensor? bias)
    {
        QuantState4Bit state;
        if (QuantState4Bit.Keys.Skip(1).Any(k => Resolve(checkpoint, $"{path}.{k}") is not null))
            state = QuantState4Bit.FromStateDict(path, key => read(key, null));
        else
        {
            using var w = ReadFloatWeight(path, linear, checkpoint, source, read, dtype);
            state = QuantState4Bit.Quantize(w, q.Bnb4bitQuantType, q.Bnb4bitUseDoubleQuant);
        }
        if (state.Shape[0] != linear.OutFeatures || state.Shape[1] != linear.InFeatures)
        {
            state.Dispose();
            throw Mismatch(checkpoint, path, $"its quant state is for a weight [{string.Join(", ", state.Shape)}], the model expects [{linear.OutFeatures}, {linear.InFeatures}]");
        }
        return new Linear4bit(state, bias, q.Bnb4bitComputeDType);
    }

    private static Linear8bitLt Load8bit(string path, ILinear linear, CheckpointFolder checkpoint, Func<string, string?> source,
        Func<string, ScalarType?, Tensor?> read, ScalarType dtype, Tensor? bias)
    {
        if (Resolve(checkpoint, $"{path}.SCB") is not null)
        {
            var weight = read("weight", null) ?? throw Mismatch(checkpoint, path, "the int8 'weight' is missing");
            var scb = read("SCB", null)!;
            using (var format = read("weight_format", null))
                if (format is not null && format.to_type(ScalarType.Int64).item<long>() != 0)
                    throw Mismatch(checkpoint, path, $"weight_format {format.to_type(ScalarType.Int64).item<long>()} is not the row-major format 0");
            if (weight.dtype != ScalarType.Int8 || !weight.shape.SequenceEqual([linear.OutFeatures, linear.InFeatures]) || scb.dtype != ScalarType.Float32 || scb.numel() != linear.OutFeatures)
            {
                var message = $"'weight' is {weight.dtype} [{string.Join(", ", weight.shape)}] and 'SCB' {scb.dtype} [{string.Join(", ", scb.shape)}]; expected Int8 [{linear.OutFeatures}, {linear.InFeatures}] and Float32 [{linear.OutFeatures}]";
                weight.Dispose(); scb.Dispose();
                throw Mismatch(checkpoint, path, message);
            }
            return new Linear8bitLt(weight, scb, bias, dtype);
        }
        using var w = ReadFloatWeight(path, linear, checkpoint, source, read, dtype);
        return Linear8bitLt.Quantize(w, bias, dtype);
    }

    /// <summary>The float weight [out, in] in <paramref name="dtype"/> (Conv1D's [in, out] transposed, as transformers does before quantizing).</summary>
    private static Tensor ReadFloatWeight(string path, ILinear linear, CheckpointFolder checkpoint, Func<string, string?> source,
        Func<string, ScalarType?, Tensor?> read, ScalarType dtype)
    {
        var name = source("weight") ?? throw new CheckpointMismatchException(
            $"The checkpoint in '{checkpoint.Folder}' does not match the model: missing tensors: '{path}.weight'.", [$"{path}.weight"], [], []);
        var expected = linear.FanInFanOut ? new[] { linear.InFeatures, linear.OutFeatures } : [linear.OutFeatures, linear.InFeatures];
        var shape = checkpoint.Info(name).Shape;
        if (!shape.SequenceEqual(expected))
            throw Mismatch(checkpoint, path, $"'{name}' is [{string.Join(", ", shape)}], the model expects [{string.Join(", ", expected)}]");
        var w = read("weight", dtype)!;
        if (!linear.FanInFanOut) return w;
        // The transposed view is disposed too: left to the finalizer, it kept each layer's float weight alive.
        using (w) using (var transposed = w.t()) return transposed.contiguous();
    }

    private static CheckpointMismatchException Mismatch(CheckpointFolder checkpoint, string path, string problem) =>
        new($"The checkpoint in '{checkpoint.Folder}' does not fit the quantized layer '{path}': {problem}.", [], [], [$"{path}: {problem}"]);

    /// <summary>The checkpoint's name for a model tensor; checkpoints of the bare model lack the "transformer." / "model." prefix (as <see cref="ModelLoader"/> resolves).</summary>
    private static string? Resolve(CheckpointFolder checkpoint, string name)
    {
        if (checkpoint.Contains(name)) return name;
        int dot = name.IndexOf('.');
        return dot > 0 && name[..dot] is "transformer" or "model" && checkpoint.Contains(name[(dot + 1)..]) ? name[(dot + 1)..] : null;
    }
}
