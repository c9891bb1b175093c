using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Native;

/// <summary>The few LibTorchSharp entry points TorchSharp keeps internal.</summary>
internal static class TorchNative
{
    [DllImport("LibTorchSharp")]
    private static extern IntPtr THSTensor_data(IntPtr handle);

    /// <summary>Address of the first element of a contiguous CPU tensor.</summary>
    public static IntPtr DataPointer(Tensor tensor)
    {
        if (tensor.device_type != DeviceType.CPU) throw new InvalidOperationException("The tensor must be on the CPU.");
        if (!tensor.is_contiguous()) throw new InvalidOperationException("The tensor must be contiguous.");
        return THSTensor_data(tensor.Handle);
    }
}
