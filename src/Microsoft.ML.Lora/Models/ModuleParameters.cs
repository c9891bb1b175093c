using System.Reflection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// Swaps a module's parameter for another tensor, as PyTorch's <c>load_state_dict(assign=True)</c>: the field the
/// module reads in forward and the registration (named_parameters, state_dict) both point at the new parameter.
/// TorchSharp offers this only to the module itself (its protected ConditionallyRegisterParameter, which <c>to()</c>
/// uses), so it is reached by reflection here, in one place.
/// </summary>
internal static class ModuleParameters
{
    private static readonly MethodInfo Register = typeof(nn.Module)
        .GetMethod("ConditionallyRegisterParameter", BindingFlags.Instance | BindingFlags.NonPublic, [typeof(string), typeof(Parameter)])
        ?? throw new MissingMethodException("TorchSharp's Module.ConditionallyRegisterParameter(string, Parameter) is missing: this TorchSharp version is not supported.");

    /// <summary>Replaces parameter <paramref name="name"/> (local to <paramref name="module"/>) by <paramref name="value"/> and disposes the old one.</summary>
    public static void Replace(nn.Module module, string name, Parameter value)
    {
        var old = module.named_parameters(recurse: false).FirstOrDefault(p => p.name == name).parameter
            ?? throw new ArgumentException($"{module.GetType().Name} has no parameter '{name}'.", nameof(name));
        if (FindField(module.GetType(), name) is { } field) field.SetValue(module, value);
        else if (module.GetType().GetProperty(name, BindingFlags.Instance | BindingFlags.Public) is { CanWrite: true } property
                 && property.PropertyType.IsAssignableFrom(typeof(Parameter)))
            property.SetValue(module, value); // TorchSharp's own modules (Embedding) register in their setter
        Register.Invoke(module, [name, value]);
        if (!ReferenceEquals(old, value)) old.Dispose();
    }

    /// <summary>The field TorchSharp registers under <paramref name="name"/>: that name, or a [ComponentName] of it.</summary>
    private static FieldInfo? FindField(Type? type, string name)
    {
        for (; type is not null && type != typeof(nn.Module); type = type.BaseType)
            foreach (var f in type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                if (f.FieldType.IsAssignableFrom(typeof(Parameter)) && (f.Name == name || ComponentName(f) == name))
                    return f;
        return null;
    }

    // TorchSharp's ComponentNameAttribute is internal: read its Name by reflection.
    private static string? ComponentName(FieldInfo field) =>
        field.GetCustomAttributes().FirstOrDefault(a => a.GetType().Name == "ComponentNameAttribute") is { } a
            ? a.GetType().GetProperty("Name")?.GetValue(a) as string
            : null;
}
