using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Generation;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

public abstract partial class CausalLm
{
    /// <summary>The tokenizer files of a Hugging Face model folder, copied by <see cref="SavePretrained"/>.</summary>
    private static readonly string[] TokenizerFiles =
        ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json"];

    /// <summary>The folder this model was loaded from, or null (its tokenizer files are copied by <see cref="SavePretrained"/>).</summary>
    public string? NameOrPath { get; internal set; }

    /// <summary>
    /// Loads a Hugging Face model folder (config.json + model.safetensors or a sharded index), as transformers'
    /// <c>AutoModelForCausalLM.from_pretrained(folder, dtype=..., device_map=...)</c>. The weights are frozen and the
    /// model is in eval mode.
    /// </summary>
    /// <param name="folder">The model folder.</param>
    /// <param name="options">dtype, device and compute dtype; null for float32 on the CPU.</param>
    /// <exception cref="ModelLoadException">A file is missing or malformed, or the checkpoint does not fit its config.json (the message names the file and tensors).</exception>
    /// <exception cref="ArgumentException">An option is invalid.</exception>
    public static CausalLm FromPretrained(string folder, ModelLoadOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        if (!Directory.Exists(folder)) throw new ModelLoadException($"Model folder '{folder}' does not exist.", folder);
        try
        {
            var model = ModelLoader.Load(folder, options);
            model.NameOrPath = folder;
            return model;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or JsonException or NotSupportedException or FormatException or InvalidCastException or KeyNotFoundException)
        {
            var file = e switch
            {
                FileNotFoundException f => f.FileName,
                CheckpointMismatchException => null,
                _ => null,
            };
            var tensor = e is CheckpointMismatchException m ? m.Missing.Concat(m.Unexpected).FirstOrDefault() : null;
            throw new ModelLoadException($"Cannot load the model in '{folder}': {e.Message}", file, tensor, e);
        }
    }

    /// <summary>
    /// The bitsandbytes quantization the model was loaded with (<see cref="ModelLoadOptions.QuantizationConfig"/>, or the
    /// <c>quantization_config</c> of a pre-quantized checkpoint), as transformers keeps it in <c>model.config</c>; null
    /// for a model in floating point. <see cref="SavePretrained"/> writes it into config.json.
    /// </summary>
    public Quantization.BitsAndBytesConfig? QuantizationConfig { get; internal set; }

    /// <summary>
    /// Writes the model as a Hugging Face folder that transformers loads (<c>save_pretrained</c>): config.json (with the
    /// model's dtype: its first floating-point parameter's), model.safetensors (Hugging Face names; a tied lm_head is not
    /// written), and the tokenizer files of the folder it was loaded from (<paramref name="tokenizerFolder"/> overrides
    /// it). A quantized model (<see cref="QuantizationConfig"/>) is written as transformers + bitsandbytes write it: each
    /// quantized linear's bitsandbytes state (packed weight, absmax, quant map, quant state JSON; or int8 weight, SCB,
    /// weight_format) and config.json's <c>quantization_config</c>, so it loads back pre-quantized. Each file is written
    /// to a temporary sibling and renamed. Save a <see cref="Peft.PeftModel"/> after <see cref="Peft.PeftModel.MergeAndUnload"/>.
    /// </summary>
    /// <param name="folder">The folder to write (created when absent).</param>
    /// <param name="tokenizerFolder">Where to copy the tokenizer files from; null for <see cref="NameOrPath"/>.</param>
    /// <exception cref="InvalidOperationException">The model still holds adapter layers, or its quantized layers do not fit its quantization config.</exception>
    public void SavePretrained(string folder, string? tokenizerFolder = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        // Every adapter layer of every method lives in the Peft namespace; none may be written into a plain checkpoint.
        if (named_modules().FirstOrDefault(m => m.module.GetType().Namespace == typeof(Peft.PeftModel).Namespace).name is { } path)
            throw new InvalidOperationException($"The model still holds adapter layers ('{path}'): call PeftModel.MergeAndUnload() before SavePretrained.");
        var quantized = Quantization.QuantizedSaving.Layers(this);
        Quantization.QuantizedSaving.CheckSavable(this, QuantizationConfig, quantized);
        Directory.CreateDirectory(folder);
        var json = ModelFactory.ToJson(Config);
        // The packed uint8 / int8 weights of quantized layers are not the model's dtype (transformers' get_parameter_dtype).
        string dtypeName = Quantization.QuantizedSaving.FloatDType(this) switch { ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16", _ => "float32" };
        if (json.ContainsKey("dtype") || !json.ContainsKey("torch_dtype")) json["dtype"] = dtypeName;
        if (json.ContainsKey("torch_dtype")) json["torch_dtype"] = dtypeName;
        // transformers writes config.quantization_config.to_dict(): the config in effect, not the one the file had.
        if (QuantizationConfig is { } quantization) json["quantization_config"] = quantization.ToJson();
        else json.Remove("quantization_config");
        using (var scope = NewDisposeScope()) // the quant-state JSON and weight_format tensors made for the file
        {
            // Tied weights are stored once, under the input embedding's name, as transformers does.
            var tensors = Quantization.QuantizedSaving.StateDict(this, quantized);
            SafeTensorsWriter.Save(Path.Combine(folder, CheckpointFolder.SingleFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        }
        AtomicFile.WriteAllText(Path.Combine(folder, "config.json"), json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        if ((tokenizerFolder ?? NameOrPath) is { } source && Path.GetFullPath(source) != Path.GetFullPath(folder))
            foreach (var name in TokenizerFiles.Concat(["generation_config.json"]))
            {
                var from = Path.Combine(source, name);
                if (File.Exists(from)) AtomicFile.Write(Path.Combine(folder, name), s => { using var r = File.OpenRead(from); r.CopyTo(s); });
            }
    }

    /// <summary>Generated tokens (prompt excluded) of one prompt, as transformers' <c>generate</c> (greedy, or sampled with <see cref="GenerationOptions.DoSample"/>).</summary>
    /// <param name="prompt">Prompt token ids.</param>
    /// <param name="options">Decoding settings; null for greedy, 32 new tokens, the model's EOS.</param>
    public IReadOnlyList<int> Generate(IReadOnlyList<int> prompt, GenerationOptions? options = null) =>
        new Generation.Generator(this).Generate(prompt, options);

    /// <summary>Generated tokens (prompts excluded) of each prompt; the prompts are left-padded into one batch.</summary>
    /// <param name="prompts">Prompt token ids, one list per row.</param>
    /// <param name="options">Decoding settings; null for greedy, 32 new tokens, the model's EOS.</param>
    public IReadOnlyList<IReadOnlyList<int>> Generate(IReadOnlyList<IReadOnlyList<int>> prompts, GenerationOptions? options = null) =>
        new Generation.Generator(this).Generate(prompts, options);
}
