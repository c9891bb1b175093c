using System.Globalization;

namespace Microsoft.ML.Lora.Quantization;

/// <summary>Python's <c>repr(float)</c>, which bitsandbytes' JSON quant state uses for nested_offset.</summary>
internal static class PythonFloat
{
    /// <summary>
    /// The shortest decimal that round-trips the double (as .NET's "R"), laid out as Python does: positional when the
    /// decimal exponent is in [-4, 16), with ".0" for integers; otherwise d.ddde±XX.
    /// </summary>
    public static string Repr(double value)
    {
        if (double.IsNaN(value)) return "NaN";
        if (double.IsInfinity(value)) return value > 0 ? "Infinity" : "-Infinity";
        if (value == 0) return double.IsNegative(value) ? "-0.0" : "0.0";
        // Shortest round-trip digits and their exponent: value = 0.d1d2d3... * 10^point.
        string shortest = Math.Abs(value).ToString("R", CultureInfo.InvariantCulture);
        int e = shortest.IndexOfAny(['E', 'e']);
        string mantissa = e < 0 ? shortest : shortest[..e];
        int exp10 = e < 0 ? 0 : int.Parse(shortest[(e + 1)..], CultureInfo.InvariantCulture);
        int dot = mantissa.IndexOf('.');
        string intPart = dot < 0 ? mantissa : mantissa[..dot];
        string fracPart = dot < 0 ? "" : mantissa[(dot + 1)..];
        string digits = (intPart + fracPart).TrimStart('0');
        int leadingZeros = (intPart + fracPart).Length - (intPart + fracPart).TrimStart('0').Length;
        int exponent = intPart.Length - leadingZeros + exp10; // position of the decimal point relative to digits
        digits = digits.TrimEnd('0');
        string sign = value < 0 ? "-" : "";
        int sci = exponent - 1; // exponent of the first digit
        if (sci >= -4 && sci < 16)
        {
            string body;
            if (exponent <= 0) body = "0." + new string('0', -exponent) + digits;
            else if (exponent >= digits.Length) body = digits + new string('0', exponent - digits.Length) + ".0";
            else body = digits[..exponent] + "." + digits[exponent..];
            return sign + body;
        }
        string m = digits.Length == 1 ? digits : digits[0] + "." + digits[1..];
        return $"{sign}{m}e{(sci < 0 ? "-" : "+")}{Math.Abs(sci):00}";
    }
}
