// QuoteTagger: PEFT fine-tuning (LoRA by default) of a causal LM inside an ML.NET pipeline. Reads quotes with their tags, trains an
// adapter to complete "quote ->: " with "tag1, tag2, tag3" (progress bar: Spectre.Console), charts the training and
// validation loss (loss.png: ScottPlot), tags new quotes and saves an adapter-only model.
// The pipeline: ConcatenateText (prompt) -> Tokenize (prompt, completion) -> Lora().CausalLm on the token id columns.
//
//   dotnet run -c Release --project src/Samples/QuoteTagger [-- --base-model <folder>] [--out <folder>]
//       [--dtype float32|bfloat16|float16] [--compute-dtype float32]
//       [--method lora|ia3|prompt-tuning|prefix-tuning|p-tuning] [--quantization none|int8|nf4] [--gradient-checkpointing]
//
// The seed's job, LoRA on BLOOM-7b1 over an 8-bit base (or QLoRA's 4-bit NF4), on one machine (docs/memory.md):
//   dotnet run -c Release --project src/Samples/QuoteTagger -- --base-model /models/bloom-7b1 --dtype bfloat16 \
//       --quantization int8 --gradient-checkpointing
//
// Without --base-model a tiny BLOOM with random weights and a byte-level tokenizer is created in a cache folder: it
// runs in about half a minute on two CPU cores, but an untrained base of that size only produces toy tags.
using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Lora;
using QuoteTagger;
using Spectre.Console;

var clock = Stopwatch.StartNew();
string? baseModel = null;
string outputDirectory = Directory.GetCurrentDirectory();
string dtype = "float32";
string? computeDType = null;
string method = "lora";
string quantization = "none";
bool checkpointing = false;
for (int i = 0; i < args.Length; i++)
{
    switch (args[i])
    {
        case "--base-model" when i + 1 < args.Length: baseModel = args[++i]; break;
        case "--out" when i + 1 < args.Length: outputDirectory = args[++i]; break;
        case "--dtype" when i + 1 < args.Length: dtype = args[++i]; break;
        case "--compute-dtype" when i + 1 < args.Length: computeDType = args[++i]; break;
        case "--method" when i + 1 < args.Length && Methods.Names.Contains(args[i + 1]): method = args[++i]; break;
        case "--quantization" when i + 1 < args.Length && Methods.Quantizations.Contains(args[i + 1]): quantization = args[++i]; break;
        case "--gradient-checkpointing": checkpointing = true; break;
        default:
            Console.Error.WriteLine("usage: QuoteTagger [--base-model <Hugging Face model folder>] [--out <folder>] [--dtype float32|bfloat16|float16] [--compute-dtype float32]" +
                $" [--method {string.Join("|", Methods.Names)}] [--quantization {string.Join("|", Methods.Quantizations)}] [--gradient-checkpointing]");
            return 2;
    }
}
Directory.CreateDirectory(outputDirectory);

bool tiny = baseModel is null;
if (tiny)
{
    baseModel = Path.Combine(Path.GetTempPath(), "mllora-cache", "tiny-bloom-256x4-v2");
    if (!File.Exists(Path.Combine(baseModel, "model.safetensors")))
    {
        TinyBaseModel.Create(baseModel, "bloom", hiddenSize: 256, layers: 4, heads: 8, seed: 0);
        Console.WriteLine($"created a tiny BLOOM (random weights, byte-level tokenizer) in {baseModel}");
    }
    Console.WriteLine("NOTE: the base model is a tiny, untrained BLOOM: the loss falls, but its tags are toys.");
    Console.WriteLine("      For real tags point the sample at a Hugging Face model folder (config.json, tokenizer.json,");
    Console.WriteLine("      *.safetensors), e.g. a local copy of bigscience/bloom-560m:");
    Console.WriteLine("      dotnet run -c Release --project src/Samples/QuoteTagger -- --base-model /models/bloom-560m");
}
baseModel = Path.GetFullPath(baseModel!);
Console.WriteLine($"base model: {baseModel}");

// Data: one JSON object per line, {"quote": "...", "tags": ["...", ...]}; the tags become one text, "tag1, tag2, tag3".
string dataFile = Path.Combine(AppContext.BaseDirectory, "Data", "quotes.jsonl");
var json = new JsonSerializerOptions { PropertyNameCaseInsensitive = true };
var quotes = File.ReadLines(dataFile)
    .Where(l => l.Trim().Length > 0)
    .Select(l => JsonSerializer.Deserialize<QuoteJson>(l, json)!)
    .Select(q => new QuoteData { Quote = q.Quote, Tags = string.Join(", ", q.Tags) })
    .ToList();
Console.WriteLine($"dataset: {quotes.Count} quotes from {dataFile}");

var ml = new MLContext(seed: 0);
// A fifth of the quotes is held out: the trainer reports the loss on them (validation loss) beside the training loss.
var split = ml.Data.TrainTestSplit(ml.Data.LoadFromEnumerable(quotes), testFraction: 0.2, seed: 0);
IDataView data = split.TrainSet;

// The MLContext log carries PEFT's trainable-parameter line; progress comes typed, through options.Progress.
var view = new TrainingView();
ml.Log += (_, e) =>
{
    if (e.RawMessage.StartsWith("trainable params:", StringComparison.Ordinal))
        AnsiConsole.WriteLine(e.RawMessage);
};

// The PEFT method: LoRA (shaped by Lora below) or another method's config, with its learning rate.
var (peftMethod, learningRate) = Methods.Of(method, tiny);
var options = new LoraCausalLmOptions
{
    BaseModelFolder = baseModel,
    PromptTokensColumnName = "PromptIds",         // token ids of "quote ->: "
    CompletionTokensColumnName = "CompletionIds", // token ids of "tag1, tag2, tag3" (read only by Fit)
    OutputColumnName = "GeneratedTags",           // text generated for each prompt
    DType = dtype,                                // base weights; bfloat16 halves their memory
    ComputeDType = computeDType,                  // "float32" over bfloat16: float32 results on bfloat16 weights
    Quantization = Methods.Quantization(quantization, dtype), // an 8-bit or 4-bit frozen base (null: none)
    Seed = 0,
    Method = peftMethod,                          // null: LoRA with the Lora options
    Lora = peftMethod is not null ? new LoraAdapterOptions()
        : tiny ? new LoraAdapterOptions { Rank = 16, Alpha = 32, Dropout = 0f, TargetModules = ["all-linear"] }
        : new LoraAdapterOptions { Rank = 16, Alpha = 32, Dropout = 0.05f },
    // LoggingSteps: a progress report (and a validation) every 4 steps, once per epoch of the tiny run.
    Training = tiny
        ? new LoraTrainingOptions { Epochs = 40, BatchSize = 8, LearningRate = learningRate, LoggingSteps = 4, WarmupRatio = 0.05, GradientCheckpointing = checkpointing }
        : new LoraTrainingOptions { Epochs = 3, BatchSize = 4, LearningRate = learningRate, LoggingSteps = 2, GradientCheckpointing = checkpointing },
    Generation = { MaxNewTokens = 24, BatchSize = 8 },
    Progress = view,
};

// Prompt "quote ->: ", tokenized with the base model's tokenizer (with its special tokens, as a prompt); completion
// "tag1, tag2, tag3" tokenized without them (the trainer appends EOS); LoRA fine-tuning on the two token id columns.
// The text steps are fitted first so that the trainer can be given the validation rows: Fit(train, validation).
var prompts = ml.Transforms.Text.ConcatenateText("Prompt", ["Quote"], suffix: " ->: ")
    .Append(ml.Lora().Tokenize(baseModel, "PromptIds", "Prompt"))
    .Append(ml.Lora().Tokenize(baseModel, "CompletionIds", "Tags", addSpecialTokens: false))
    .Fit(data);
var trainer = ml.Lora().CausalLm(options);

Console.WriteLine($"fine-tuning ({method}): {options.Training.Epochs} epochs, batch {options.Training.BatchSize}, lr {options.Training.LearningRate}" +
    (peftMethod is null ? $", r {options.Lora.Rank}" : "") + (quantization == "none" ? "" : $", {quantization} base") + (checkpointing ? ", gradient checkpointing" : ""));
var lora = view.Run(() => trainer.Fit(prompts.Transform(data), prompts.Transform(split.TestSet)));
var model = prompts.Append(lora);
AnsiConsole.Write(view.Summary());

string chart = Path.Combine(outputDirectory, "loss.png");
LossChart.WritePng(chart, view.TrainingLoss, view.ValidationLoss, $"quote tagger {method}: training and validation loss");
Console.WriteLine($"wrote {chart}");

// Tag new quotes: a prediction reads only the quote (Tags stays empty; its token ids feed only the training).
string[] newQuotes = ["The world is your oyster.", "So many books, so little time.", "Training models with PEFT and LoRA is cool."];
var tags = new List<string>();
using (var engine = ml.Model.CreatePredictionEngine<QuoteData, TagPrediction>(model))
    foreach (var q in newQuotes)
    {
        string t = engine.Predict(new QuoteData { Quote = q }).GeneratedTags;
        tags.Add(t);
        Console.WriteLine($"{q} ->: {t}");
    }

string zip = Path.Combine(outputDirectory, "quote-tagger.zip");
ml.Model.SaveAtomically(model, data.Schema, zip); // a kill or a full disk during the save keeps the previous zip
long adapterBytes;
using (var archive = System.IO.Compression.ZipFile.OpenRead(zip))
    adapterBytes = archive.Entries.Where(e => e.FullName.EndsWith("adapter_model.safetensors", StringComparison.Ordinal)).Sum(e => e.Length);
long baseBytes = Directory.EnumerateFiles(baseModel, "*.safetensors").Sum(f => new FileInfo(f).Length);
Console.WriteLine(FormattableString.Invariant(
    $"saved {zip}: {new FileInfo(zip).Length / 1024.0:F1} KiB (adapter_model.safetensors {adapterBytes / 1024.0:F1} KiB + options + base model reference; the {baseBytes / 1024.0 / 1024.0:F1} MiB of base weights stay in {baseModel})"));

// Reload in a fresh context: same tags.
var ml2 = new MLContext(seed: 1);
var loaded = ml2.Model.Load(zip, out _);
using (var engine = ml2.Model.CreatePredictionEngine<QuoteData, TagPrediction>(loaded))
{
    bool same = newQuotes.Select(q => engine.Predict(new QuoteData { Quote = q }).GeneratedTags).SequenceEqual(tags);
    Console.WriteLine($"reloaded model gives the same tags: {(same ? "yes" : "NO")}");
}
(loaded as IDisposable)?.Dispose();
model.Dispose();
Console.WriteLine(FormattableString.Invariant($"{method}: final training loss {view.TrainingLoss[^1].loss:F4}, done in {clock.Elapsed.TotalSeconds:F0} s"));
return 0;

/// <summary>A line of quotes.jsonl.</summary>
internal sealed record QuoteJson(string Quote, string[] Tags);

/// <summary>A row of the pipeline: the quote, and its tags ("tag1, tag2, tag3") when training.</summary>
internal sealed class QuoteData
{
    public string Quote { get; set; } = "";
    public string Tags { get; set; } = "";
}

/// <summary>What the model adds: the generated tags.</summary>
internal sealed class TagPrediction
{
    public string GeneratedTags { get; set; } = "";
}
