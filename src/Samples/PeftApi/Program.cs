// The lower-level API end to end, as a transformers + PEFT user writes it (docs/api.md walks through it):
// load a base model, apply LoRA, train 10 steps, save the adapter; then, in a fresh process, load the adapter, check it
// reproduces the trained model's logits, merge it and save the merged model as a Hugging Face folder; finally load that
// folder as a plain model. Usage: PeftApi [work folder] [base model folder]; with no base model folder it makes a tiny
// random BLOOM (TinyBaseModel) so the sample runs in seconds.
using System.Diagnostics;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Tokenization;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

if (args is ["--load", var adapterFolder, var baseFolder, var mergedFolder, var expectedLogits])
    return LoadMergeSave(adapterFolder, baseFolder, mergedFolder, expectedLogits);

string work = args.Length > 0 ? args[0] : Path.Combine(Path.GetTempPath(), "peft-api-sample");
Directory.CreateDirectory(work);
string baseModel = args.Length > 1 ? args[1] : TinyBaseModel.Create(Path.Combine(work, "base"));
string adapter = Path.Combine(work, "adapter"), merged = Path.Combine(work, "merged"), logitsFile = Path.Combine(work, "logits.bin");

// 1. Load the base model and its tokenizer (AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained).
var tokenizer = HfTokenizer.Load(baseModel);
var model = CausalLm.FromPretrained(baseModel, new ModelLoadOptions { DType = ScalarType.Float32, Device = "cpu" });

// 2. Apply LoRA (get_peft_model) and print the trainable parameters.
random.manual_seed(0); // LoRA's A matrices are drawn from torch's generator, as in PEFT
var peft = PeftModel.GetPeftModel(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = ["query_key_value", "dense"] });
peft.PrintTrainableParameters();

// 3. Train 10 steps on prompt -> completion pairs (the prompt is masked from the loss).
string[] quotes = ["The sun is shining.", "It is raining again.", "What a lovely day.", "The storm is coming."];
string[] tags = [" sunny", " rainy", " sunny", " stormy"];
var examples = quotes.Zip(tags, (q, t) => new TrainingExample(tokenizer.Encode($"{q} ->"), tokenizer.Encode(t, addSpecialTokens: false))).ToList();
using (var trainer = new Trainer(peft, new TrainingOptions { LearningRate = 1e-2, BatchSize = 2, MaxSteps = 10, LoggingSteps = 5 }))
{
    var state = trainer.Train(examples, progress: new SyncProgress(p => Console.WriteLine($"step {p.Step}/{p.TotalSteps} loss {p.Loss:F4}")));
    Console.WriteLine($"trained {state.GlobalStep} steps: loss {state.LossHistory[0]:F4} -> {state.LossHistory[^1]:F4}");
}

// 4. Save the adapter in PEFT's format (save_pretrained), and the trained model's logits for the check in step 5.
peft.SavePretrained(adapter);
int[] probe = tokenizer.Encode("The sun is shining. ->");
using (no_grad())
using (var logits = peft.Forward(tensor(probe.Select(i => (long)i).ToArray()).unsqueeze(0)))
    File.WriteAllBytes(logitsFile, logits.to(ScalarType.Float32).bytes.ToArray());
Console.WriteLine($"adapter saved to {adapter}: {string.Join(", ", Directory.GetFiles(adapter).Select(Path.GetFileName))}");
var generated = peft.Generate(probe, new GenerationOptions { MaxNewTokens = 3 });
Console.WriteLine($"generates ids [{string.Join(", ", generated)}]: \"{tokenizer.Decode(generated)}\"");
model.Dispose();

// 5-7 run in a fresh process: nothing of this one is reused.
var start = new ProcessStartInfo(Environment.ProcessPath!);
if (Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet") start.ArgumentList.Add(typeof(SyncProgress).Assembly.Location); // run as "dotnet PeftApi.dll"
foreach (var a in new[] { "--load", adapter, baseModel, merged, logitsFile }) start.ArgumentList.Add(a);
var child = Process.Start(start)!;
child.WaitForExit();
return child.ExitCode;

static int LoadMergeSave(string adapterFolder, string baseFolder, string mergedFolder, string logitsFile)
{
    var tokenizer = HfTokenizer.Load(baseFolder);
    var expected = File.ReadAllBytes(logitsFile);
    var probe = tensor(tokenizer.Encode("The sun is shining. ->").Select(i => (long)i).ToArray()).unsqueeze(0);

    // 5. Load the base model again and the adapter onto it (PeftModel.from_pretrained).
    var model = CausalLm.FromPretrained(baseFolder);
    var peft = PeftModel.FromPretrained(model, adapterFolder);
    using var _ = no_grad();
    Console.WriteLine($"[fresh process] adapter loaded: max |logits - trained logits| = {MaxDiff(peft.Forward(probe), expected):E2}");

    // 6. Merge the adapter into the weights (merge_and_unload) and save a Hugging Face folder transformers loads.
    var mergedModel = peft.MergeAndUnload();
    mergedModel.SavePretrained(mergedFolder);
    Console.WriteLine($"[fresh process] merged model saved to {mergedFolder}: {string.Join(", ", Directory.GetFiles(mergedFolder).Select(Path.GetFileName).Order())}");

    // 7. The merged folder is an ordinary model folder.
    var reloaded = CausalLm.FromPretrained(mergedFolder);
    double diff = MaxDiff(reloaded.Forward(probe), expected);
    Console.WriteLine($"[fresh process] merged model reloaded: max |logits - trained logits| = {diff:E2}");
    return diff < 1e-4 ? 0 : 1;
}

static double MaxDiff(Tensor logits, byte[] expected)
{
    using var e = tensor(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(expected).ToArray()).reshape(logits.shape);
    return (logits.to(ScalarType.Float32) - e).abs().max().item<float>();
}

/// <summary>An IProgress that reports on the training thread (Progress&lt;T&gt; posts to the thread pool, out of order).</summary>
sealed class SyncProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
{
    public void Report(TrainingProgress value) => report(value);
}
