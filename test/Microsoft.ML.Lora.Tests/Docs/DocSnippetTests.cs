// Every ```csharp snippet of README.md and docs/*.md is compiled and run by this test, so the docs cannot drift from
// the code. The convention (also in docs/README.md):
//
// - A snippet is a complete C# program of top-level statements (types it needs are declared after the statements, as
//   C# allows). It is compiled as a console app with the SDK's implicit usings (System, System.IO, System.Linq,
//   System.Collections.Generic, System.Net.Http, System.Threading, System.Threading.Tasks) plus `using Microsoft.ML;`,
//   `using Microsoft.ML.Data;` and every public namespace of Microsoft.ML.Lora (Microsoft.ML.Lora, ...Peft,
//   ...Tokenization, ...), i.e. what a console app referencing the package with those global usings sees.
// - It runs in a separate process, in a fresh empty working folder, with a 2-minute limit, and must exit normally.
//   It makes what it needs there: `TinyBaseModel.Create("tiny-model")` writes a small random BLOOM with a byte-level
//   tokenizer (trains in a second); "models/<arch>" (bloom, gpt2, llama, qwen2, ...) are copies of the reference
//   checkpoints of shared/fixtures/models (tiny, made by transformers, without tokenizer; with PEFT adapters in
//   models/<arch>/lora/labels_full/adapter), present when the snippet mentions "models/".
// - Fence tags, each only with a reason after the colon:
//     ```csharp no-run: needs a CUDA device        compiled, not run
//     ```csharp fragment: quotes an internal type   neither compiled nor run (declarations quoted from the source)
//   Any other tag after csharp fails the test, as does a tag without a reason.
using System.Diagnostics;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace Microsoft.ML.Lora.Tests.Docs;

public sealed partial class DocSnippetTests
{
    /// <summary>One ```csharp block: where it is, its fence tag and its code.</summary>
    public sealed record Snippet(string File, int Line, string Tag, string Reason, string Code)
    {
        public override string ToString() => $"{File}:{Line}";
    }

    public static string RepoRoot { get; } = FindRepoRoot();

    public static IReadOnlyList<Snippet> All { get; } = Read();

    public static TheoryData<string> Ids()
    {
        var data = new TheoryData<string>();
        foreach (var s in All) data.Add(s.ToString());
        return data;
    }

    [Fact]
    public void The_docs_have_snippets_and_each_fence_tag_is_known_and_has_a_reason()
    {
        All.Should().NotBeEmpty();
        foreach (var s in All)
        {
            s.Tag.Should().BeOneOf(new[] { "", "no-run", "fragment" }, $"{s}: the fence tag after csharp must be empty, 'no-run: reason' or 'fragment: reason'");
            if (s.Tag != "") s.Reason.Should().NotBeNullOrWhiteSpace($"{s}: a '{s.Tag}' snippet must say why after the colon");
        }
    }

    [Theory]
    [MemberData(nameof(Ids))]
    public async Task Snippet_compiles_and_runs(string id)
    {
        var snippet = All.Single(s => s.ToString() == id);
        if (snippet.Tag == "fragment") return;
        using var work = new TempFolder();
        string dll = Compile(snippet, work.File("snippet.dll"));
        if (snippet.Tag == "no-run") return;

        string cwd = Directory.CreateDirectory(work.File("cwd")).FullName;
        if (snippet.Code.Contains("models/", StringComparison.Ordinal))
            foreach (var model in Directory.GetDirectories(System.IO.Path.Combine(Fixtures.Root, "models")))
                CopyFolder(model, System.IO.Path.Combine(cwd, "models", System.IO.Path.GetFileName(model)));

        var (exit, output) = await RunChild(dll, cwd, TimeSpan.FromMinutes(2));
        exit.Should().Be(0, $"the snippet at {snippet} must run to the end; its output:\n{output}");
    }

    /// <summary>Compiles the snippet into <paramref name="path"/>; fails with the compiler's errors, located in the doc.</summary>
    internal static string Compile(Snippet snippet, string path)
    {
        var parse = new CSharpParseOptions(LanguageVersion.Preview);
        var usings = string.Join("\n", Usings().Select(u => $"global using {u};"));
        var trees = new[]
        {
            CSharpSyntaxTree.ParseText(snippet.Code, parse, path: snippet.File),
            CSharpSyntaxTree.ParseText(usings, parse, path: "GlobalUsings.cs"),
        };
        var compilation = CSharpCompilation.Create("DocSnippet", trees, References.Value,
            new CSharpCompilationOptions(OutputKind.ConsoleApplication, nullableContextOptions: NullableContextOptions.Enable));
        using var stream = File.Create(path);
        var result = compilation.Emit(stream);
        var errors = result.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error)
            .Select(d => $"{snippet.File}:{snippet.Line + d.Location.GetLineSpan().StartLinePosition.Line + 1}: {d.Id} {d.GetMessage()}").ToList();
        result.Success.Should().BeTrue($"the snippet at {snippet} must compile:\n{string.Join("\n", errors)}");
        return path;
    }

    /// <summary>The implicit usings of a console app, ML.NET's two, and every public namespace of the library.</summary>
    internal static IEnumerable<string> Usings() =>
        new[] { "System", "System.IO", "System.Linq", "System.Collections.Generic", "System.Net.Http", "System.Threading", "System.Threading.Tasks",
                "Microsoft.ML", "Microsoft.ML.Data" }
        .Concat(typeof(LoraCausalLmTrainer).Assembly.GetExportedTypes().Select(t => t.Namespace!).Where(n => n != null))
        .Distinct();

    /// <summary>Everything the test host can load: the framework and the test's dependencies (ML.NET, TorchSharp, the library).</summary>
    private static readonly Lazy<List<MetadataReference>> References = new(() =>
        ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(System.IO.Path.PathSeparator)
            .Where(p => p.EndsWith(".dll", StringComparison.OrdinalIgnoreCase) && IsManaged(p))
            .Select(p => (MetadataReference)MetadataReference.CreateFromFile(p)).ToList());

    private static bool IsManaged(string path)
    {
        try { AssemblyName.GetAssemblyName(path); return true; }
        catch (BadImageFormatException) { return false; }
    }

    private static async Task<(int Exit, string Output)> RunChild(string dll, string cwd, TimeSpan limit)
    {
        var start = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = cwd,
        };
        foreach (var arg in new[] { "exec", typeof(DocSnippetTests).Assembly.Location, DocSnippetProgram.Command, dll })
            start.ArgumentList.Add(arg);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(limit);
        try { await process.WaitForExitAsync(timeout.Token); }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            return (-1, $"timed out after {limit.TotalSeconds} s\n{await stdout}\n{await stderr}");
        }
        string output = await stdout + await stderr;
        return (process.ExitCode, output.Length > 6000 ? output[^6000..] : output);
    }

    private static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from)) File.Copy(file, System.IO.Path.Combine(to, System.IO.Path.GetFileName(file)));
        foreach (var dir in Directory.GetDirectories(from)) CopyFolder(dir, System.IO.Path.Combine(to, System.IO.Path.GetFileName(dir)));
    }

    [GeneratedRegex(@"^(?<indent> {0,3})(?<fence>`{3,})csharp(?<rest>[^\n]*)$")]
    private static partial Regex Opening();

    /// <summary>Every ```csharp block of README.md and docs/*.md, with its 1-based line of the opening fence.</summary>
    private static List<Snippet> Read()
    {
        var files = new[] { System.IO.Path.Combine(RepoRoot, "README.md") }
            .Concat(Directory.GetFiles(System.IO.Path.Combine(RepoRoot, "docs"), "*.md", SearchOption.AllDirectories).Order(StringComparer.Ordinal));
        var list = new List<Snippet>();
        foreach (var file in files)
        {
            var lines = File.ReadAllLines(file);
            string rel = System.IO.Path.GetRelativePath(RepoRoot, file).Replace('\\', '/');
            for (int i = 0; i < lines.Length; i++)
            {
                var m = Opening().Match(lines[i]);
                if (!m.Success) continue;
                string fence = m.Groups["fence"].Value;
                var (tag, reason) = Tag(m.Groups["rest"].Value);
                var code = new StringBuilder();
                int j = i + 1;
                for (; j < lines.Length && lines[j].Trim() != fence; j++) code.AppendLine(lines[j]);
                list.Add(new Snippet(rel, i + 1, tag, reason, code.ToString()));
                i = j;
            }
        }
        return list;
    }

    private static (string Tag, string Reason) Tag(string rest)
    {
        rest = rest.Trim();
        int colon = rest.IndexOf(':');
        return colon < 0 ? (rest, "") : (rest[..colon].Trim(), rest[(colon + 1)..].Trim());
    }

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(System.IO.Path.Combine(dir.FullName, "MLLora.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("MLLora.sln not found above " + AppContext.BaseDirectory);
    }
}

/// <summary>
/// The child side of <see cref="DocSnippetTests"/>: <c>dotnet exec Microsoft.ML.Lora.Tests.dll run-snippet SNIPPET.dll</c>
/// loads the compiled snippet and runs its entry point in the current folder (a fresh one). Exit code 0 when it returns.
/// </summary>
public static class DocSnippetProgram
{
    public const string Command = "run-snippet";

    public static int Run(string dll)
    {
        var entry = Assembly.LoadFrom(dll).EntryPoint ?? throw new InvalidOperationException($"{dll} has no entry point.");
        object? result = entry.Invoke(null, entry.GetParameters().Length == 0 ? null : new object[] { Array.Empty<string>() });
        if (result is Task task) task.GetAwaiter().GetResult();
        return result is int code ? code : result is Task<int> t ? t.Result : 0;
    }
}
