// Placeholder: exercises ConsoleProgress and LossChart on fake data. Replaced later by the real sample.
using System.Diagnostics;
using QuoteTagger;

string outputDirectory = args.Length > 0 ? args[0] : Directory.GetCurrentDirectory();

string dataFile = Path.Combine(AppContext.BaseDirectory, "Data", "quotes.jsonl");
Console.WriteLine(File.Exists(dataFile)
    ? $"dataset: {File.ReadLines(dataFile).Count(l => l.Length > 0)} quotes in {dataFile}"
    : $"dataset: {dataFile} not found");

// A fake training run: noisy exponential decay of the loss, cosine learning-rate schedule.
const int totalSteps = 60;
var random = new Random(42);
var points = new List<(int step, double loss)>();
var progress = new ConsoleProgress();
var ciLog = new StringWriter();
var ciProgress = new ConsoleProgress(ciLog, interactive: false);
var clock = Stopwatch.StartNew();
for (int step = 1; step <= totalSteps; step++)
{
    double loss = 0.35 + 3.2 * Math.Exp(-step / 12.0) + 0.08 * (random.NextDouble() - 0.5);
    double lr = 1e-3 * 0.5 * (1 + Math.Cos(Math.PI * step / totalSteps));
    points.Add((step, loss));
    Thread.Sleep(15);
    var report = (step, totalSteps, loss, learningRate: lr, tokensPerSecond: 1200 + 100 * random.NextDouble(), elapsed: clock.Elapsed);
    progress.Report(report);
    ciProgress.Report(report with { elapsed = TimeSpan.FromSeconds(step * 0.8) });
}
progress.Complete();
Console.WriteLine("redirected-output mode (a line per 10%):");
Console.Write(ciLog.ToString());

string chart = Path.Combine(outputDirectory, "loss.png");
LossChart.WritePng(chart, points, "quote tagger LoRA: training loss");
Console.WriteLine($"wrote {chart}");

// Small losses (scientific labels) with a NaN gap that breaks the line.
var small = Enumerable.Range(0, 200)
    .Select(i => (step: i * 5, loss: i is >= 90 and < 100 ? double.NaN : 2e-4 * Math.Exp(-i / 60.0) + 1e-5))
    .ToList();
string smallChart = Path.Combine(outputDirectory, "loss-small.png");
LossChart.WritePng(smallChart, small, "small loss, nan gap");
Console.WriteLine($"wrote {smallChart}");

// Self-checks of the encoder pieces.
bool crcOk = LossChart.Crc32.Compute("123456789"u8) == 0xCBF43926u;
byte[] head = File.ReadAllBytes(chart)[..8];
bool signatureOk = head.SequenceEqual(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A });
Console.WriteLine($"crc32 check value: {(crcOk ? "ok" : "WRONG")}, png signature: {(signatureOk ? "ok" : "WRONG")}");
return crcOk && signatureOk ? 0 : 1;
