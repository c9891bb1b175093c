using System.Reflection;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>Finds submodules by dotted path and replaces one in its parent (field by reflection + re-registration).</summary>
internal static class ModuleSurgery
{
    public static nn.Module Get(nn.Module root, string path)
    {
        if (path.Length == 0) return root;
        foreach (var (name, m) in root.named_modules()) if (name == path) return m;
        throw new KeyNotFoundException($"No module '{path}'.");
    }

    /// <summary>Replaces the child <paramref name="path"/> by <paramref name="replacement"/>.</summary>
    public static void Replace(nn.Module root, string path, nn.Module replacement)
    {
        int dot = path.LastIndexOf('.');
        var parent = Get(root, dot < 0 ? "" : path[..dot]);
        string name = dot < 0 ? path : path[(dot + 1)..];
        var old = Get(root, path);
        FieldInfo? field = null;
        for (var t = parent.GetType(); t != null && field == null; t = t.BaseType)
            field = t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic)
                .FirstOrDefault(f => f.Name == name && ReferenceEquals(f.GetValue(parent), old))
                ?? t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic)
                .FirstOrDefault(f => ReferenceEquals(f.GetValue(parent), old) && f.FieldType.IsAssignableFrom(replacement.GetType()));
        if (field != null)
        {
            if (!field.FieldType.IsAssignableFrom(replacement.GetType()))
                throw new InvalidOperationException($"Field '{field.Name}' of {parent.GetType().Name} has type {field.FieldType.Name}; cannot hold a {replacement.GetType().Name}.");
            field.SetValue(parent, replacement);
        }
        else
            throw new InvalidOperationException($"Cannot replace '{path}': no field of {parent.GetType().Name} holds it.");
        // Re-registering appends; the children after it are registered again too, so the parent's order (and with it
        // named_modules, the parameters' order and the order a later adapter initialises its layers in) stays as it
        // was, as Python's setattr keeps it.
        var later = parent.named_children().SkipWhile(c => c.name != name).Skip(1).ToList();
        parent.register_module(name, null!);
        parent.register_module(name, replacement);
        foreach (var (n, child) in later)
        {
            parent.register_module(n, null!);
            parent.register_module(n, child);
        }
    }
}
