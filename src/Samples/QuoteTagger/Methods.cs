using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Quantization;
using static TorchSharp.torch;

namespace QuoteTagger;

/// <summary>
/// The <c>--method</c> choices: each PEFT method's config (PEFT's defaults but for the number of virtual tokens) and
/// the learning rate it trains well with. Prompt methods train only a few thousand values and take larger steps than
/// LoRA, as in PEFT's examples.
/// </summary>
internal static class Methods
{
    public static readonly string[] Names = ["lora", "ia3", "prompt-tuning", "prefix-tuning", "p-tuning"];

    /// <summary>The config (null: LoRA from the Lora options) and the learning rate, for the tiny or a real base model.</summary>
    public static (PeftConfig? Config, float LearningRate) Of(string name, bool tiny) => name switch
    {
        "lora" => (null, tiny ? 5e-3f : 3e-4f),
        "ia3" => (new IA3Config(), tiny ? 3e-2f : 3e-3f),
        // TEXT init: the virtual tokens start as the embeddings of a task description (the base model's tokenizer).
        "prompt-tuning" => (new PromptTuningConfig { NumVirtualTokens = 16, PromptTuningInit = PromptTuningInit.Text, PromptTuningInitText = "Give three tags for the quote:" },
            3e-2f),
        "prefix-tuning" => (new PrefixTuningConfig { NumVirtualTokens = 16 }, 1e-2f),
        "p-tuning" => (new PromptEncoderConfig { NumVirtualTokens = 16, EncoderHiddenSize = 128 }, tiny ? 1e-2f : 1e-3f),
        _ => throw new ArgumentException($"Unknown method '{name}'; use one of {string.Join(", ", Names)}."),
    };

    /// <summary>The <c>--quantization</c> choices.</summary>
    public static readonly string[] Quantizations = ["none", "int8", "nf4"];

    /// <summary>
    /// The frozen base's quantization: none, LLM.int8 (the seed's load_in_8bit), or QLoRA's NF4 with double quant
    /// computing in the weights' dtype (bfloat16 for a bfloat16 base, as the QLoRA recipe).
    /// </summary>
    public static BitsAndBytesConfig? Quantization(string name, string dtype) => name switch
    {
        "none" => null,
        "int8" => new BitsAndBytesConfig { LoadIn8bit = true },
        "nf4" => new BitsAndBytesConfig
        {
            LoadIn4bit = true, Bnb4bitQuantType = "nf4", Bnb4bitUseDoubleQuant = true,
            Bnb4bitComputeDType = dtype == "bfloat16" ? ScalarType.BFloat16 : dtype == "float16" ? ScalarType.Float16 : ScalarType.Float32,
        },
        _ => throw new ArgumentException($"Unknown quantization '{name}'; use one of {string.Join(", ", Quantizations)}."),
    };
}
