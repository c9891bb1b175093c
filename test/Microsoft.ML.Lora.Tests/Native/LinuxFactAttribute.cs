namespace Microsoft.ML.Lora.Tests.Native;

/// <summary>A fact that is skipped on operating systems other than Linux.</summary>
public sealed class LinuxFactAttribute : FactAttribute
{
    public LinuxFactAttribute()
    {
        if (!OperatingSystem.IsLinux()) Skip = "Linux only: ELF libraries and libstdc++.";
    }
}
