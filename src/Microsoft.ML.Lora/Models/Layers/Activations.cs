using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>The activations of transformers' ACT2FN that the supported architectures use.</summary>
internal static class Activations
{
    private static readonly double Sqrt2OverPi = Math.Sqrt(2.0 / Math.PI);

    public static Tensor Apply(string name, Tensor x) => name switch
    {
        "gelu_new" or "gelu_pytorch_tanh" or "gelu_fast" => GeluTanh(x),
        "gelu" => nn.functional.gelu(x),
        "relu" => nn.functional.relu(x),
        "silu" or "swish" or "" => nn.functional.silu(x),
        _ => throw new NotSupportedException($"Activation '{name}' is not supported."),
    };

    /// <summary>0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))), transformers' NewGELUActivation.</summary>
    public static Tensor GeluTanh(Tensor x) => 0.5 * x * (1.0 + tanh(Sqrt2OverPi * (x + 0.044715 * x.pow(3))));
}
