using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>
/// Entry point of the test assembly (Microsoft.NET.Test.Sdk's generated one is turned off in the csproj), used by
/// <see cref="SeparateProcessTests"/>: <c>dotnet exec Microsoft.ML.Lora.Tests.dll load-model ZIP PROMPT</c> loads a
/// saved model in a fresh process, touching no type of Microsoft.ML.Lora first, and prints the generated text;
/// <c>run-snippet SNIPPET.dll</c> runs a compiled doc snippet (<see cref="Docs.DocSnippetTests"/>);
/// <c>save-model ...</c> saves a model until it is killed (<see cref="Reliability.ModelSaveProgram"/>).
/// </summary>
public static class ModelLoadProgram
{
    public static int Main(string[] args)
    {
        if (args.Length == 2 && args[0] == Docs.DocSnippetProgram.Command)
            return Docs.DocSnippetProgram.Run(args[1]);
        if (args.Length > 0 && args[0] == Reliability.ModelSaveProgram.Command)
            return Reliability.ModelSaveProgram.Run(args[1..]);
        if (args.Length == 3 && args[0] == ReloadCyclesProgram.Command)
            return ReloadCyclesProgram.Run(args[1..]);
        if (args.Length != 3 || args[0] != "load-model")
            return 2;
        var ml = new MLContext(seed: 5);
        var model = ml.Model.Load(args[1], out _);
        var data = ml.Data.LoadFromEnumerable(new[] { new Question { Prompt = args[2] } });
        Console.WriteLine("GENERATED:" + model.Transform(data).GetColumn<string>("GeneratedText").Single());
        return 0;
    }
}
