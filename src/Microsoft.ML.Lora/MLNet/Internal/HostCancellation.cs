using Microsoft.ML.Runtime;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// How <c>mlContext.CancelExecution()</c> is seen: ML.NET marks its hosts through the internal ICancelable interface
/// (publicized at build time, MLNet/Internal/Build/MLNetInternals.targets), which its own Host.CheckAlive reads.
/// </summary>
internal static class HostCancellation
{
    public static bool IsCanceled(IHostEnvironment host) => host is ICancelable { IsCanceled: true };
}
