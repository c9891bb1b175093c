using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>
/// Quantization of a model's frozen linear layers while it loads, as transformers' <c>BitsAndBytesConfig</c>: LLM.int8
/// (<see cref="LoadIn8bit"/>) or 4-bit NF4/FP4 (<see cref="LoadIn4bit"/>, QLoRA). Embeddings, norms and lm_head stay
/// in the model's dtype; see docs/quantization.md.
/// </summary>
public sealed record BitsAndBytesConfig
{
    /// <summary>load_in_8bit: LLM.int8 weights (int8 rows with a float32 scale per row).</summary>
    public bool LoadIn8bit { get; init; }

    /// <summary>load_in_4bit: 4-bit weights of <see cref="Bnb4bitQuantType"/>, blocks of 64 values with one absmax each.</summary>
    public bool LoadIn4bit { get; init; }

    /// <summary>bnb_4bit_quant_type: "fp4" (default, as transformers) or "nf4" (QLoRA's normal float).</summary>
    public string Bnb4bitQuantType { get; init; } = "fp4";

    /// <summary>bnb_4bit_use_double_quant: quantize the per-block absmax again to 8 bits (blocks of 256), saving about 0.37 bits a weight.</summary>
    public bool Bnb4bitUseDoubleQuant { get; init; }

    /// <summary>bnb_4bit_compute_dtype: the dtype 4-bit layers dequantize into and multiply in (default Float32, as transformers).</summary>
    public ScalarType Bnb4bitComputeDType { get; init; } = ScalarType.Float32;

    /// <summary>
    /// llm_int8_skip_modules: linear modules to keep unquantized, by name ("lm_head", "q_proj") or path prefix
    /// ("model.layers.0"). Null (default): transformers' choice, the output embedding (lm_head). A list replaces it,
    /// as in transformers: include "lm_head" to keep it.
    /// </summary>
    public IReadOnlyList<string>? LlmInt8SkipModules { get; init; }

    /// <summary>
    /// llm_int8_threshold (default 6.0), kept for transformers' configs: it selects the activation columns bitsandbytes'
    /// int8 matmul keeps in 16 bits. This library multiplies with the dequantized int8 weight in floating point (no int8
    /// activations), so the threshold has no effect on results; the weights are quantized as bitsandbytes does
    /// (threshold 0, no outlier columns).
    /// </summary>
    public double LlmInt8Threshold { get; init; } = 6.0;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first bad option or combination.</summary>
    public void Validate()
    {
        if (LoadIn4bit && LoadIn8bit)
            throw new ArgumentException("BitsAndBytesConfig: LoadIn4bit and LoadIn8bit are both true, but only one can be used at the same time.");
        if (!LoadIn4bit && !LoadIn8bit)
            throw new ArgumentException("BitsAndBytesConfig quantizes nothing: set LoadIn4bit (4-bit NF4/FP4) or LoadIn8bit (LLM.int8).");
        if (Bnb4bitQuantType is not ("nf4" or "fp4"))
            throw new ArgumentException($"BitsAndBytesConfig.Bnb4bitQuantType '{Bnb4bitQuantType}' is not supported; use \"nf4\" or \"fp4\".");
        if (Bnb4bitComputeDType is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
            throw new ArgumentException($"BitsAndBytesConfig.Bnb4bitComputeDType {Bnb4bitComputeDType} is not supported; use Float32, BFloat16 or Float16.");
        if (!double.IsFinite(LlmInt8Threshold) || LlmInt8Threshold < 0)
            throw new ArgumentException($"BitsAndBytesConfig.LlmInt8Threshold {LlmInt8Threshold} must be a finite number >= 0.");
        if (LlmInt8SkipModules?.FirstOrDefault(string.IsNullOrWhiteSpace) is not null || LlmInt8SkipModules?.Any(m => m is null) == true)
            throw new ArgumentException("BitsAndBytesConfig.LlmInt8SkipModules contains an empty module name.");
    }

    /// <summary>The linear modules kept unquantized: <see cref="LlmInt8SkipModules"/>, or transformers' default (the output embedding).</summary>
    internal IReadOnlyList<string> ModulesToNotConvert => LlmInt8SkipModules ?? ["lm_head"];

    /// <summary>
    /// Whether the linear module at <paramref name="path"/> is quantized: transformers' replace_with_bnb_linear skips it
    /// when its own name is listed, or a listed key equals its path or is a dotted prefix inside it.
    /// </summary>
    internal bool Converts(string path)
    {
        string name = path[(path.LastIndexOf('.') + 1)..];
        return !ModulesToNotConvert.Any(k => k == name || k == path || path.Contains(k + ".", StringComparison.Ordinal));
    }

    /// <summary>
    /// The <c>quantization_config</c> block transformers writes into config.json (<c>BitsAndBytesConfig.to_dict()</c>, its
    /// keys sorted as <c>to_json_string</c> sorts them).
    /// </summary>
    public JsonObject ToJson() => new()
    {
        ["_load_in_4bit"] = LoadIn4bit,
        ["_load_in_8bit"] = LoadIn8bit,
        ["bnb_4bit_compute_dtype"] = DTypeName(Bnb4bitComputeDType),
        ["bnb_4bit_quant_storage"] = "uint8",
        ["bnb_4bit_quant_type"] = Bnb4bitQuantType,
        ["bnb_4bit_use_double_quant"] = Bnb4bitUseDoubleQuant,
        ["llm_int8_enable_fp32_cpu_offload"] = false,
        ["llm_int8_has_fp16_weight"] = false,
        ["llm_int8_skip_modules"] = LlmInt8SkipModules is null ? null : new JsonArray(LlmInt8SkipModules.Select(m => (JsonNode)m!).ToArray()),
        // A Python float, as json.dumps writes it ("6.0", where System.Text.Json writes "6").
        ["llm_int8_threshold"] = double.IsFinite(LlmInt8Threshold) ? JsonNode.Parse(PythonFloat.Repr(LlmInt8Threshold)) : LlmInt8Threshold,
        ["load_in_4bit"] = LoadIn4bit,
        ["load_in_8bit"] = LoadIn8bit,
        ["quant_method"] = "bitsandbytes",
    };

    /// <summary>
    /// Reads the <c>quantization_config</c> of a config.json (null when absent). Throws <see cref="NotSupportedException"/>
    /// for other quantization methods or options this library does not implement, naming <paramref name="source"/>.
    /// </summary>
    public static BitsAndBytesConfig? FromJson(JsonNode? node, string source)
    {
        if (node is null) return null;
        if (node is not JsonObject o) throw new InvalidDataException($"{source}: quantization_config is not a JSON object.");
        string method = o["quant_method"]?.GetValue<string>() ?? "bitsandbytes";
        if (method != "bitsandbytes")
            throw new NotSupportedException($"{source}: quantization_config quant_method '{method}' is not supported; only bitsandbytes (load_in_8bit / load_in_4bit) is.");
        bool Bool(string key) => o[key] is JsonValue v && v.TryGetValue(out bool b) && b;
        T Get<T>(string key, T fallback)
        {
            try { return o[key] is JsonValue v ? v.GetValue<T>() : fallback; }
            catch (Exception e) when (e is FormatException or InvalidOperationException)
            { throw new InvalidDataException($"{source}: quantization_config.{key} is {o[key]!.ToJsonString()}, not a {typeof(T).Name}."); }
        }
        string storage = Get("bnb_4bit_quant_storage", "uint8");
        if (storage != "uint8")
            throw new NotSupportedException($"{source}: bnb_4bit_quant_storage '{storage}' is not supported; 4-bit weights stored as uint8 are.");
        if (Bool("llm_int8_has_fp16_weight"))
            throw new NotSupportedException($"{source}: llm_int8_has_fp16_weight true (trainable 16-bit weights) is not supported.");
        var skip = o["llm_int8_skip_modules"] switch
        {
            null => null,
            JsonArray a => a.Select(m => m?.GetValue<string>() ?? "").ToList(),
            JsonValue v when v.TryGetValue(out string? s) => new List<string> { s! },
            var other => throw new InvalidDataException($"{source}: quantization_config.llm_int8_skip_modules is {other.ToJsonString()}, not a list of names."),
        };
        var config = new BitsAndBytesConfig
        {
            LoadIn4bit = Bool("load_in_4bit") || Bool("_load_in_4bit"),
            LoadIn8bit = Bool("load_in_8bit") || Bool("_load_in_8bit"),
            Bnb4bitQuantType = Get("bnb_4bit_quant_type", "fp4"),
            Bnb4bitUseDoubleQuant = Bool("bnb_4bit_use_double_quant"),
            Bnb4bitComputeDType = ParseDType(Get<string?>("bnb_4bit_compute_dtype", null), source),
            LlmInt8SkipModules = skip,
            LlmInt8Threshold = Get("llm_int8_threshold", 6.0),
        };
        try { config.Validate(); }
        catch (ArgumentException e) { throw new InvalidDataException($"{source}: quantization_config: {e.Message}", e); }
        return config;
    }

    private static string DTypeName(ScalarType t) => QuantState4Bit.DTypeName(t);

    private static ScalarType ParseDType(string? name, string source) => name switch
    {
        null or "float32" or "torch.float32" => ScalarType.Float32,
        "bfloat16" or "torch.bfloat16" => ScalarType.BFloat16,
        "float16" or "torch.float16" => ScalarType.Float16,
        _ => throw new InvalidDataException($"{source}: quantization_config.bnb_4bit_compute_dtype '{name}' is not float32, bfloat16 or float16."),
    };
}
