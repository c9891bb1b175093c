using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Quantization;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Benchmarks;

/// <summary>
/// The seed's job at full size: a BLOOM-7b1-shaped bfloat16 checkpoint (vocab 250,880, hidden 4,096, 30 layers, 32
/// heads; 13.2 GiB of weights) written as a sparse file (a valid safetensors header, zero data: no disk, no time), loaded,
/// then LoRA r=16 on query_key_value trained for N steps on 1 x 64 tokens with gradient checkpointing. Reports load time,
/// peak RSS after the load, and each step's time and peak RSS. Needs about 15 GiB of free memory for bf16: run one at a
/// time. Args: [--folder DIR] [--quantization none|int8|nf4] [--steps N] [--fingerprint]. int8 is LLM.int8, nf4 QLoRA's
/// NF4 with double quant and bfloat16 compute; both run prepare_model_for_kbit_training first. --fingerprint times the
/// ML.NET base-model fingerprint of the checkpoint, computed and then cached.
/// </summary>
internal sealed class BigModelBenchmark : IBenchmark
{
    public string Name => "big-model";
    public string Description => "BLOOM-7b1-shaped sparse bf16 checkpoint: load time, peak RSS, LoRA r=16 steps on 1x64 tokens with gradient checkpointing ([--folder DIR] [--quantization none|int8|nf4] [--steps N] [--fingerprint])";

    public void Run(string[] args)
    {
        string folder = Path.Combine(Path.GetTempPath(), "mllora-bloom-7b1-shape"), quantization = "none";
        int steps = 1;
        bool fingerprint = false;
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--fingerprint") fingerprint = true;
            if (i + 1 >= args.Length) continue;
            if (args[i] == "--folder") folder = args[i + 1];
            if (args[i] == "--quantization") quantization = args[i + 1];
            if (args[i] == "--steps") steps = int.Parse(args[i + 1], CultureInfo.InvariantCulture);
        }
        var bnb = Quantization(quantization);

        var config = Bloom7b1();
        var sw = Stopwatch.StartNew();
        long bytes = WriteSparseCheckpoint(config, folder);
        Console.WriteLine($"checkpoint {folder}: {bytes / (double)(1L << 30):F2} GiB (sparse) written in {sw.Elapsed.TotalSeconds:F1} s");
        if (fingerprint) Fingerprint(folder);

        sw.Restart();
        var model = ModelLoader.Load(folder, new ModelLoadOptions { DType = ScalarType.BFloat16, QuantizationConfig = bnb });
        double loadSeconds = sw.Elapsed.TotalSeconds, loadPeak = PeakMemory.PeakRssGiB();
        Console.WriteLine($"[{quantization}] load {loadSeconds:F1} s, model tensors {TensorGiB(model):F2} GiB, RSS {PeakMemory.RssMiB() / 1024:F2} GiB, peak RSS {loadPeak:F2} GiB");

        // The seed's recipe: prepare_model_for_kbit_training on a quantized base (norms in float32, checkpointing);
        // checkpointing alone on the bfloat16 one.
        if (bnb is null) model.GradientCheckpointingEnable();
        else KbitTraining.PrepareModelForKbitTraining(model);
        var lora = PeftModel.GetPeftModel(model, new LoraConfig { R = 16, LoraAlpha = 32, LoraDropout = 0.05, TargetModules = ["query_key_value"] });
        Console.WriteLine($"[{quantization}] {lora.TrainableReport()}");
        using var trainer = new Trainer(lora, new TrainingOptions { BatchSize = 1, MaxSteps = steps, GradientCheckpointing = true });
        var rng = new Random(0);
        var ids = Enumerable.Range(0, 64).Select(_ => rng.Next(config.VocabSize)).ToArray();
        var collator = new Collator(config.PadTokenId ?? 0, config.EosTokenId, false, true, 0, OverlengthPolicy.Error);
        double stepPeak = 0, stepSeconds = 0;
        for (int s = 1; s <= steps; s++)
        {
            using var batch = collator.Collate([collator.Encode(new TrainingExample([], ids), 0)], model.Device);
            PeakMemory.ResetPeak(); // the step's own peak, not the load's
            sw.Restart();
            double loss = trainer.Step([batch], 2e-4);
            stepSeconds = sw.Elapsed.TotalSeconds;
            stepPeak = Math.Max(stepPeak, PeakMemory.PeakRssGiB());
            Console.WriteLine($"[{quantization}] step {s}: loss {loss:F4}, {stepSeconds:F1} s, RSS {PeakMemory.RssMiB() / 1024:F2} GiB, step peak RSS {PeakMemory.PeakRssGiB():F2} GiB");
        }
        Console.WriteLine($"[{quantization}] | load {loadSeconds:F1} s | load peak {loadPeak:F2} GiB | step {stepSeconds:F1} s | step peak {stepPeak:F2} GiB | peak RSS {Math.Max(loadPeak, stepPeak):F2} GiB");
    }

    /// <summary>--quantization none (bfloat16), int8 (LLM.int8) or nf4 (QLoRA: NF4, double quant, bfloat16 compute).</summary>
    private static BitsAndBytesConfig? Quantization(string name) => name switch
    {
        "none" => null,
        "int8" => new BitsAndBytesConfig { LoadIn8bit = true },
        "nf4" => new BitsAndBytesConfig { LoadIn4bit = true, Bnb4bitQuantType = "nf4", Bnb4bitUseDoubleQuant = true, Bnb4bitComputeDType = ScalarType.BFloat16 },
        _ => throw new ArgumentException($"--quantization must be none, int8 or nf4; got '{name}'."),
    };

    /// <summary>Bytes of the model's parameters and buffers (quantized weights, scales), in GiB.</summary>
    private static double TensorGiB(nn.Module model) =>
        model.parameters().Concat(model.buffers()).Sum(t => t.numel() * (long)t.ElementSize) / (double)(1L << 30);

    /// <summary>
    /// The base-model fingerprint a saved ML.NET model keeps (MLNet/Internal/BaseModelReference): first with an empty
    /// cache (SHA-256 of every byte), then from the cache file keyed by the files' stamps, as the next process sees it.
    /// </summary>
    private static void Fingerprint(string folder)
    {
        string cache = Path.Combine(Path.GetTempPath(), $"mllora-bench-cache-{Environment.ProcessId}");
        Environment.SetEnvironmentVariable("MLLORA_CACHE", cache);
        try
        {
            var sw = Stopwatch.StartNew();
            var first = MLNet.BaseModelReference.Of(folder).Fingerprint;
            double firstSeconds = sw.Elapsed.TotalSeconds;
            MLNet.BaseModelReference.ClearProcessCache(); // a new process: only the cache file is left
            sw.Restart();
            var again = MLNet.BaseModelReference.Of(folder).Fingerprint;
            double cachedSeconds = sw.Elapsed.TotalSeconds;
            if (again != first) throw new InvalidOperationException("The cached fingerprint differs from the computed one.");
            Console.WriteLine($"fingerprint: {firstSeconds:F1} s computed (every byte), {cachedSeconds * 1000:F1} ms from the cache file");
        }
        finally { Directory.Delete(cache, recursive: true); }
    }

    private static ModelConfig Bloom7b1() => ModelConfig.Parse(new JsonObject
    {
        ["model_type"] = "bloom", ["vocab_size"] = 250880, ["hidden_size"] = 4096, ["n_layer"] = 30, ["n_head"] = 32,
        ["layer_norm_epsilon"] = 1e-5, ["bos_token_id"] = 1, ["eos_token_id"] = 2, ["pad_token_id"] = 3,
        ["apply_residual_connection_post_layernorm"] = false, ["torch_dtype"] = "bfloat16",
    });

    /// <summary>config.json and a model.safetensors whose header lists every parameter (bf16) and whose data is a hole.</summary>
    private static long WriteSparseCheckpoint(ModelConfig config, string folder)
    {
        using var meta = EmptyWeights.Create(() => ModelFactory.Create(config));
        var header = new JsonObject { ["__metadata__"] = new JsonObject { ["format"] = "pt" } };
        long offset = 0;
        foreach (var (name, p) in meta.named_parameters())
        {
            long size = p.shape.Aggregate(2L, (a, b) => a * b);
            header[name] = new JsonObject
            {
                ["dtype"] = "BF16", ["shape"] = new JsonArray([.. p.shape.Select(d => (JsonNode)d)]),
                ["data_offsets"] = new JsonArray(offset, offset + size),
            };
            offset += size;
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8; // the data starts 8-byte aligned, as safetensors writes it
        long total = 8 + padded + offset;
        string path = Path.Combine(folder, CheckpointFolder.SingleFile);
        if (File.Exists(path) && new FileInfo(path).Length == total && File.Exists(Path.Combine(folder, "config.json"))) return total;
        AtomicFile.WriteAllText(Path.Combine(folder, "config.json"), ModelFactory.ToJson(config).ToJsonString());
        AtomicFile.Write(path, stream =>
        {
            stream.Write(BitConverter.GetBytes((ulong)padded));
            stream.Write(json);
            for (int i = json.Length; i < padded; i++) stream.WriteByte((byte)' ');
            stream.SetLength(total); // a hole: zeros that take no disk
        });
        return total;
    }
}
