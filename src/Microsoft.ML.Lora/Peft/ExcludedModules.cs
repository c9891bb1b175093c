namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// PEFT 0.18's <c>exclude_modules</c> (LoRA and IA3): the modules an adapter never wraps, checked before target_modules
/// (<c>check_target_module_exists</c>), and the errors and warning of <c>inject_adapter</c> that tell excluded modules from
/// unmatched ones. A list entry matches a path equal to it or ending with "." + entry; a string is a regular expression
/// that must match the whole path (<c>re.fullmatch</c>).
/// </summary>
internal static class ExcludedModules
{
    /// <summary>PEFT's error when every module of the model was excluded (none merely unmatched).</summary>
    public const string AllExcludedMessage =
        "All modules were excluded. This is likely unintended. Check your `target_modules`, `exclude_modules` and `modules_to_save` configuration.";

    /// <summary>Whether exclude_modules is set: PEFT tests its truth, so null, "" and an empty list exclude nothing.</summary>
    public static bool IsSet(IReadOnlyList<string>? names, string? regex) => regex is { Length: > 0 } || names is { Count: > 0 };

    /// <summary>Whether <paramref name="key"/> (a module path) is excluded by the list <paramref name="names"/> or the regex <paramref name="regex"/>.</summary>
    public static bool IsExcluded(IReadOnlyList<string>? names, string? regex, string key)
    {
        if (regex is { Length: > 0 }) return LoraTargets.FullMatch(regex, key);
        return names is { Count: > 0 } && names.Any(n => LoraConfig.SuffixMatch(key, n));
    }

    /// <summary>Both forms set at once is refused: PEFT's field holds one list or one string.</summary>
    public static void Validate(string configName, IReadOnlyList<string>? names, string? regex)
    {
        if (names is not null && regex is not null)
            throw new ArgumentException($"{configName}: set ExcludeModules (a list) or ExcludeModulesRegex (PEFT's string form of exclude_modules), not both.");
    }

    /// <summary>
    /// PEFT's inject_adapter walk over the module <paramref name="paths"/>: each one excluded (<paramref name="isExcluded"/>,
    /// checked first), selected (<paramref name="isSelected"/>) or unmatched. Returns the selected paths in order; none is
    /// one of PEFT's errors (<see cref="NothingTargeted"/>, with <paramref name="notFound"/> when nothing was excluded),
    /// and exclude_modules that excluded nothing gives PEFT's warning.
    /// </summary>
    public static List<string> Select(IEnumerable<string> paths, Func<string, bool> isExcluded, Func<string, bool> isSelected,
        IReadOnlyList<string>? names, string? regex, Func<string> notFound, Action<string>? warning,
        IReadOnlyList<int>? layersToTransform = null, IReadOnlyList<string>? layersPattern = null)
    {
        var selected = new List<string>();
        bool anyExcluded = false, anyUnmatched = false;
        foreach (var path in paths)
        {
            if (isExcluded(path)) anyExcluded = true;
            else if (isSelected(path)) selected.Add(path);
            else anyUnmatched = true;
        }
        if (selected.Count == 0) throw NothingTargeted(anyExcluded, anyUnmatched, notFound, layersToTransform, layersPattern);
        if (IsSet(names, regex) && !anyExcluded) warning?.Invoke(UnusedWarning(names, regex));
        return selected;
    }

    /// <summary>
    /// PEFT's checks once no module was selected: every module excluded; some excluded and the rest unmatched (this
    /// text); or nothing excluded, where <paramref name="notFound"/> gives the method's own "not found" message.
    /// </summary>
    public static ArgumentException NothingTargeted(bool anyExcluded, bool anyUnmatched, Func<string> notFound,
        IReadOnlyList<int>? layersToTransform = null, IReadOnlyList<string>? layersPattern = null)
    {
        if (anyExcluded && !anyUnmatched) return new ArgumentException(AllExcludedMessage);
        if (!anyExcluded) return new ArgumentException(notFound());
        var message = "No modules were targeted for adaptation. This might be caused by a combination of mismatched target modules and excluded modules. " +
            "Please check your `target_modules` and `exclude_modules` configuration. You may also have only targeted modules that are marked to be saved (`modules_to_save`).";
        if (layersToTransform is not null) message += $" Note: You specified 'layers_to_transform': [{string.Join(", ", layersToTransform)}].";
        if (layersPattern is not null) message += $" You also specified 'layers_pattern': [{string.Join(", ", layersPattern.Select(p => $"'{p}'"))}].";
        return new ArgumentException(message);
    }

    /// <summary>
    /// PEFT's warning when exclude_modules is set but excluded nothing; the list is shown as Python prints the set PEFT
    /// holds (entries sorted here, Python's order being a hash order).
    /// </summary>
    public static string UnusedWarning(IReadOnlyList<string>? names, string? regex)
    {
        var shown = regex is { Length: > 0 } ? regex : "{" + string.Join(", ", names!.Distinct().Order(StringComparer.Ordinal).Select(n => $"'{n}'")) + "}";
        return $"You have passed exclude_modules={shown} but no modules were excluded. Please check that exclude_modules was set correctly.";
    }

    /// <summary>exclude_modules as PEFT writes it: null, the regex string, or the list (a set in PEFT, written as a list; sorted here).</summary>
    public static System.Text.Json.Nodes.JsonNode? Json(IReadOnlyList<string>? names, string? regex) =>
        regex is not null ? System.Text.Json.Nodes.JsonValue.Create(regex)
        : names is null ? null
        : new System.Text.Json.Nodes.JsonArray([.. names.Distinct().Order(StringComparer.Ordinal).Select(n => System.Text.Json.Nodes.JsonValue.Create(n))]);

    /// <summary>Reads exclude_modules: a string is the regex form, a list the names; anything else names the field.</summary>
    public static (List<string>? Names, string? Regex) Read(System.Text.Json.Nodes.JsonObject j, string path) =>
        j["exclude_modules"] is System.Text.Json.Nodes.JsonValue
            ? (null, PeftJson.String(j, "exclude_modules", path))
            : (PeftJson.Strings(j, "exclude_modules", path), null);
}
