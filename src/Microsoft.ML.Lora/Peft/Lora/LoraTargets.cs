using System.Text.RegularExpressions;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// Which modules a <see cref="LoraConfig"/> adapts, by module path, with PEFT 0.18's rules
/// (<c>check_target_module_exists</c>, <c>_maybe_include_all_linear_layers</c> and <c>get_pattern_key</c>).
/// </summary>
internal static class LoraTargets
{
    /// <summary>How long one regex of a config may run on one module path before it is treated as a bad pattern.</summary>
    private static readonly TimeSpan RegexTimeout = TimeSpan.FromSeconds(1);

    /// <summary>
    /// Whether <paramref name="key"/> is excluded (PEFT's <c>_ExcludedModule</c>): it matches exclude_modules, or lies in a
    /// modules_to_save module (adapters never go there: <c>re.match(rf"(^|.*\.){m}($|\..*)", key)</c>).
    /// </summary>
    public static bool IsExcluded(LoraConfig c, string key) =>
        ExcludedModules.IsExcluded(c.ExcludeModules, c.ExcludeModulesRegex, key)
        || c.ModulesToSave is { Count: > 0 } saved && saved.Any(m => Match($"(^|.*\\.){m}($|\\..*)", key, anchoredEnd: false));

    /// <summary>Whether <paramref name="key"/> (a module path such as <c>model.layers.0.self_attn.q_proj</c>) is a target of <paramref name="c"/>.</summary>
    public static bool IsTarget(LoraConfig c, string key) => !IsExcluded(c, key) && IsSelected(c, key);

    /// <summary>Whether target_modules (with layers_to_transform) selects <paramref name="key"/>, exclusions aside.</summary>
    public static bool IsSelected(LoraConfig c, string key)
    {
        if (c.TargetModulesRegex is { } regex) return FullMatch(regex, key);
        var names = c.TargetModules!;
        // A name equal to the whole path is taken as is; layers_to_transform only filters suffix matches.
        if (names.Contains(key)) return true;
        if (!names.Any(t => key.EndsWith("." + t, StringComparison.Ordinal))) return false;
        if (c.LayersToTransform is not { Count: > 0 } layers) return true;
        return LayerIndex(key, c.LayersPattern) is int i && layers.Contains(i);
    }

    /// <summary>
    /// PEFT's layer index of a path: the number after the last <c>.&lt;name&gt;.</c> followed by <c>.</c> (any name, or one of
    /// <paramref name="layersPattern"/>), e.g. 3 in <c>model.layers.3.mlp.up_proj</c>; null when there is none.
    /// </summary>
    public static int? LayerIndex(string key, IReadOnlyList<string>? layersPattern)
    {
        var patterns = layersPattern is { Count: > 0 } ? layersPattern.Select(p => $@".*\.{p}\.(\d+)\.") : [@".*\.[^.]*\.(\d+)\."];
        foreach (var p in patterns)
        {
            var m = Regex.Match(key, "^(?:" + p + ")", RegexOptions.None, RegexTimeout);
            if (m.Success) return int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        }
        return null;
    }

    /// <summary>
    /// PEFT's <c>get_pattern_key</c>: the first key of <paramref name="patterns"/> (in their order) that matches the end of
    /// <paramref name="key"/> at a dot boundary (<c>re.match(rf"(.*\.)?({pattern})$", key)</c>), or null.
    /// </summary>
    public static string? PatternKey(IEnumerable<string> patterns, string key) =>
        patterns.FirstOrDefault(p => Match($"(.*\\.)?({p})$", key, anchoredEnd: false));

    /// <summary>
    /// The config with <c>"all-linear"</c> resolved to the paths of every linear module but the output layer, as PEFT
    /// writes them into adapter_config.json; other configs unchanged.
    /// </summary>
    public static LoraConfig ResolveAllLinear(LoraConfig c, IEnumerable<string> linearPaths, string outputLayer = "lm_head")
    {
        if (!c.IsAllLinear) return c;
        if (c.LayersToTransform is not null || c.LayersPattern is not null)
            throw new ArgumentException($"LoraConfig: layers_to_transform and layers_pattern cannot be used with target_modules '{LoraConfig.AllLinear}' (a string in PEFT, which refuses this too); list the module names instead.");
        return c with { TargetModules = [.. linearPaths.Where(p => p != outputLayer)], TargetModulesRegex = null };
    }

    /// <summary>re.fullmatch of <paramref name="pattern"/> on <paramref name="key"/>.</summary>
    public static bool FullMatch(string pattern, string key) => Match(pattern, key, anchoredEnd: true);

    private static bool Match(string pattern, string key, bool anchoredEnd)
    {
        try { return Regex.IsMatch(key, anchoredEnd ? $"^(?:{pattern})$" : $"^(?:{pattern})", RegexOptions.None, RegexTimeout); }
        catch (ArgumentException e) { throw new ArgumentException($"LoraConfig: '{pattern}' is not a valid regular expression: {e.Message}", e); }
        catch (RegexMatchTimeoutException e) { throw new ArgumentException($"LoraConfig: the regular expression '{pattern}' took too long on '{key}'.", e); }
    }
}
