using Microsoft.ML.Lora.Tests.MLNet;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// The child process of <see cref="ModelSaveKillTests"/>: <c>save-model ZIP BASE_FOLDER ROWS atomic|plain loop|once [2]</c>
/// fits the fake-backend model on ROWS rows (with "2", a chain of two such models: a zip twice as big), prints "SAVING", then saves it to ZIP (forever with "loop", so that a
/// kill lands in the middle of a save), with <c>mlContext.Model.SaveAtomically</c> or ML.NET's plain path overload.
/// </summary>
public static class ModelSaveProgram
{
    public const string Command = "save-model";

    public static int Run(string[] args)
    {
        string zip = args[0], baseFolder = args[1], mode = args[3];
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(ModelSaveKillTests.SaveRows(int.Parse(args[2], System.Globalization.CultureInfo.InvariantCulture)));
        ITransformer model = args.Length > 5 && args[5] == "2"
            ? ModelSaveKillTests.Trainer(ml, baseFolder).Append(ModelSaveKillTests.Trainer(ml, baseFolder, "GeneratedText2")).Fit(data)
            : ModelSaveKillTests.Trainer(ml, baseFolder).Fit(data);
        Console.WriteLine("SAVING");
        do
        {
            try
            {
                if (mode == "atomic") ml.Model.SaveAtomically(model, data.Schema, zip);
                else ml.Model.Save(model, data.Schema, zip);
            }
            catch (IOException e)
            {
                Console.WriteLine("SAVE FAILED: " + e.Message);
                return 3;
            }
        }
        while (args[4] == "loop");
        return 0;
    }
}
