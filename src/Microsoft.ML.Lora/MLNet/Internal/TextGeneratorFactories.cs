namespace Microsoft.ML.Lora.MLNet;

/// <summary>Resolves the <see cref="ITextGeneratorFactory"/> used when none is given and the one named by a saved model.</summary>
internal static class TextGeneratorFactories
{
    /// <summary>The TorchSharp LoRA backend.</summary>
    public static ITextGeneratorFactory Default { get; } = new TorchSharpTextGeneratorFactory();

    /// <summary>Name stored in saved models: "Namespace.Type, AssemblySimpleName".</summary>
    public static string NameOf(ITextGeneratorFactory factory)
    {
        var type = factory.GetType();
        return type.FullName + ", " + type.Assembly.GetName().Name;
    }

    public static ITextGeneratorFactory FromName(string name)
    {
        var type = Type.GetType(name, throwOnError: false)
            ?? throw new InvalidOperationException($"The text generator backend '{name}' named by the model cannot be found; load the assembly that defines it first.");
        if (!typeof(ITextGeneratorFactory).IsAssignableFrom(type) || type.IsAbstract)
            throw new InvalidOperationException($"'{name}' named by the model is not a text generator backend.");
        if (type == Default.GetType())
            return Default;
        return (ITextGeneratorFactory)(Activator.CreateInstance(type)
            ?? throw new InvalidOperationException($"Cannot create the text generator backend '{name}'."));
    }
}
