namespace Microsoft.ML.Lora.Tests;

/// <summary>Paths of the reference files in ../shared/fixtures (made with Hugging Face transformers, peft, tokenizers).</summary>
internal static class Fixtures
{
    public static string Root { get; } = FindRoot();

    public static string Model(string arch) => Path.Combine(Root, "models", arch);

    public static string Tokenizer(string name) => Path.Combine(Root, "tokenizers", name);

    public static readonly string[] Architectures = ["bloom", "gpt2", "llama", "qwen2", "qwen3", "phi3", "gemma2"];

    private static string FindRoot()
    {
        var env = Environment.GetEnvironmentVariable("MLLORA_FIXTURES");
        if (!string.IsNullOrEmpty(env)) return env;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "shared", "fixtures");
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException(
            "Fixtures not found: expected a 'shared/fixtures' folder beside or above the repository (or set MLLORA_FIXTURES).");
    }
}
