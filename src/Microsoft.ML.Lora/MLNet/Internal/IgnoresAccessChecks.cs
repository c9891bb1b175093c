// Lets this assembly use the internal save/load machinery of Microsoft.ML.Core at run time; the compiler sees it
// through the publicized reference written by MLNet/Internal/Build/MLNetInternals.targets. The runtime honours this
// attribute by name, so it is declared here. Keep every use of ML.NET internals inside MLNet/Internal.
[assembly: System.Runtime.CompilerServices.IgnoresAccessChecksTo("Microsoft.ML.Core")]

namespace System.Runtime.CompilerServices
{
    [AttributeUsage(AttributeTargets.Assembly, AllowMultiple = true)]
    internal sealed class IgnoresAccessChecksToAttribute : Attribute
    {
        public IgnoresAccessChecksToAttribute(string assemblyName) => AssemblyName = assemblyName;

        public string AssemblyName { get; }
    }
}
