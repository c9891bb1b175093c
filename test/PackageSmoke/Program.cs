// The package smoke app: an application outside the solution, as a user writes it, built by
// test/Microsoft.ML.Lora.Tests/Packaging/PackageSmokeTests.cs in a temp folder against the packed Microsoft.ML.Lora
// (PackageRoute/) or the library project (ProjectRoute/), with TorchSharp-cpu; NoRuntime/ leaves the runtime out.
//
//   train <work folder>                       makes a tiny base model in <work>/base, fits the documented pipeline on
//                                             three tagged quotes, saves <work>/model.zip and writes the tags it
//                                             generates for the quotes to <work>/expected.txt
//   predict <zip> <base folder> <out file>    loads the zip with the base model at <base folder> in a new process
//                                             (mlContext.Lora().LoadModel) and writes the tags it generates to <out file>
using Microsoft.ML;
using Microsoft.ML.Lora;

// Tagged quotes: the adapter learns them by heart, so a model loaded without it (or with another) tags them differently.
(string Quote, string Tags)[] examples = [("Less is more.", "design, simplicity"), ("Know thyself.", "wisdom"), ("Time is money.", "work, time")];
var ml = new MLContext(seed: 0);
switch (args)
{
    case ["train", var work]:
    {
        string baseModel = TinyBaseModel.Create(Path.Combine(work, "base"));
        IDataView data = ml.Data.LoadFromEnumerable(examples.Select(e => new QuoteData { Quote = e.Quote, Tags = e.Tags }));
        var pipeline = ml.Transforms.Text.ConcatenateText("Prompt", ["Quote"], suffix: " ->: ")
            .Append(ml.Lora().Tokenize(baseModel, "PromptIds", "Prompt"))
            .Append(ml.Lora().Tokenize(baseModel, "CompletionIds", "Tags", addSpecialTokens: false))
            .Append(ml.Lora().CausalLm(new LoraCausalLmOptions
            {
                BaseModelFolder = baseModel,
                PromptTokensColumnName = "PromptIds",
                CompletionTokensColumnName = "CompletionIds",
                OutputColumnName = "GeneratedTags",
                Lora = { Rank = 16, Alpha = 32, Dropout = 0f, TargetModules = ["all-linear"] },
                Training = { Epochs = 60, BatchSize = 3, LearningRate = 5e-3f },
                Generation = { MaxNewTokens = 24 },
            }));
        var model = pipeline.Fit(data);
        File.WriteAllLines(Path.Combine(work, "expected.txt"), Tag(model));
        ml.Model.SaveAtomically(model, data.Schema, Path.Combine(work, "model.zip"));
        model.Dispose();
        break;
    }
    case ["predict", var zip, var baseModel, var output]:
    {
        var model = ml.Lora().LoadModel(zip, out _, baseModelFolder: baseModel, device: "cpu");
        File.WriteAllLines(output, Tag(model));
        (model as IDisposable)?.Dispose();
        break;
    }
    default:
        Console.Error.WriteLine("usage: PackageSmoke train <work> | predict <zip> <base> <out>");
        return 2;
}
Console.WriteLine("PackageSmoke " + args[0] + ": done");
return 0;

// Generated tags for each quote, one line each (escaped, so an empty or multi-line generation stays one line).
IEnumerable<string> Tag(ITransformer model)
{
    using var engine = ml.Model.CreatePredictionEngine<QuoteData, TagPrediction>(model);
    return examples.Select(e => System.Text.Json.JsonSerializer.Serialize(engine.Predict(new QuoteData { Quote = e.Quote }).GeneratedTags)).ToList();
}

class QuoteData { public string Quote { get; set; } = ""; public string Tags { get; set; } = ""; }
class TagPrediction { public string GeneratedTags { get; set; } = ""; }
