using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>
/// The code books of bitsandbytes (functional.get_4bit_type and create_dynamic_map): the 16 NF4 and FP4 values a 4-bit
/// nibble decodes to, and the 256-value signed dynamic map of the nested 8-bit quantization (double quant).
/// </summary>
internal static class BnbCodes
{
    /// <summary>NF4 (QLoRA's normal float): quantiles of N(0, 1) scaled to [-1, 1], as bitsandbytes lists them.</summary>
    public static readonly float[] Nf4 =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
        -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
        0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
        0.7229568362236023f, 1.0f,
    ];

    /// <summary>
    /// FP4 (e2m1 with bitsandbytes' exponent bias) divided by its maximum 12, in float32 as bitsandbytes divides.
    /// Nibble 8 is Python's integer -0, that is +0.0 (two +0.0 entries).
    /// </summary>
    public static readonly float[] Fp4 =
        new[] { 0, 0.0625f, 8f, 12f, 4f, 6f, 2f, 3f, 0f, -0.0625f, -8f, -12f, -4f, -6f, -2f, -3f }.Select(v => v / 12f).ToArray();

    /// <summary>The code book of a 4-bit type: "nf4" or "fp4".</summary>
    public static float[] FourBit(string quantType) => quantType switch
    {
        "nf4" => Nf4,
        "fp4" => Fp4,
        _ => throw new ArgumentException($"4-bit quant_type '{quantType}' is not supported; use \"nf4\" or \"fp4\"."),
    };

    private static readonly Lazy<float[]> s_dynamic = new(CreateDynamicMap);

    /// <summary>bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8), sorted, 256 values.</summary>
    public static float[] DynamicMap => s_dynamic.Value;

    private static float[] CreateDynamicMap()
    {
        // For each exponent i, 2^i + 1 float32 linspace boundaries in [0.1, 1]; the float32 midpoints times the
        // float32 10^(i-6) (torch multiplies a float32 tensor by a Python float in float32), both signs.
        var data = new List<double>();
        for (int i = 0; i < 7; i++)
        {
            using var boundaries = linspace(0.1, 1, (1 << i) + 1, dtype: ScalarType.Float32);
            long k = boundaries.shape[0];
            using var means = (boundaries.narrow(0, 0, k - 1) + boundaries.narrow(0, 1, k - 1)) / 2.0;
            double scale = Math.Pow(10, i - 6);
            using var positive = means * scale;
            using var negative = means * -scale;
            data.AddRange(positive.data<float>().Select(v => (double)v));
            data.AddRange(negative.data<float>().Select(v => (double)v));
        }
        data.Add(0);
        data.Add(1.0);
        data.Sort();
        return data.Select(v => (float)v).ToArray();
    }
}
