using Microsoft.ML.Data;
using System.IO.Compression;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Xunit.Abstractions;

namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>
/// Every registered PEFT method through the ML.NET estimator (<see cref="LoraCausalLmOptions.Method"/>) on a tiny BLOOM:
/// PEFT's trainable-parameter line from the config alone, the loss going down, the adapter saved in PEFT's format in the
/// zip, and the same generations after Save/Load.
/// </summary>
[Collection("TorchGlobalRng")]
public sealed class MethodSelectionTests(ITestOutputHelper output) : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "mllora-methods-" + Guid.NewGuid().ToString("N"));
    private string? _base;

    private string Base => _base ??= TinyBaseModel.Create(Path.Combine(_root, "tiny-bloom"), "bloom", hiddenSize: 32, layers: 2, heads: 4, seed: 3);

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { }
    }

    private static Row[] Rows() =>
    [
        new() { Prompt = "sky ->: ", Completion = "blue" },
        new() { Prompt = "grass ->: ", Completion = "green" },
        new() { Prompt = "snow ->: ", Completion = "white" },
        new() { Prompt = "coal ->: ", Completion = "black" },
    ];

    /// <summary>The method of each case (null: the LoRA options).</summary>
    private static PeftConfig? Method(string name) => name switch
    {
        "lora" => null,
        "ia3" => new IA3Config(),
        "prompt-tuning" => new PromptTuningConfig { NumVirtualTokens = 4 },
        "prompt-tuning-text" => new PromptTuningConfig { NumVirtualTokens = 4, PromptTuningInit = PromptTuningInit.Text, PromptTuningInitText = "color of" },
        "prefix-tuning" => new PrefixTuningConfig { NumVirtualTokens = 4 },
        "p-tuning" => new PromptEncoderConfig { NumVirtualTokens = 4 },
        _ => throw new ArgumentException(name),
    };

    /// <summary>The trainable count from the config alone (what docs/peft-methods.md tabulates).</summary>
    private static long Trainable(ModelConfig config, PeftConfig? method) => method switch
    {
        null => PeftParameterCount.Lora(config, new LoraConfig()),
        IA3Config ia3 => PeftParameterCount.IA3(config, ia3),
        PromptLearningConfig pl => PeftParameterCount.PromptLearning(config, pl),
        _ => throw new ArgumentException(method.PeftType),
    };

    [Theory]
    [InlineData("lora", "LORA")]
    [InlineData("ia3", "IA3")]
    [InlineData("prompt-tuning", "PROMPT_TUNING")]
    [InlineData("prompt-tuning-text", "PROMPT_TUNING")]
    [InlineData("prefix-tuning", "PREFIX_TUNING")]
    [InlineData("p-tuning", "P_TUNING")]
    public void Each_method_fits_reports_peft_parameters_saves_peft_files_and_reloads(string name, string peftType)
    {
        var ml = new MLContext(seed: 1);
        var log = new List<string>();
        ml.Log += (_, e) => { if (e.RawMessage.StartsWith("trainable params", StringComparison.Ordinal)) lock (log) log.Add(e.RawMessage); };
        var losses = new List<double>();
        var options = new LoraCausalLmOptions
        {
            BaseModelFolder = Base,
            Seed = 5,
            Method = Method(name),
            Training = { MaxSteps = 8, BatchSize = 4, LearningRate = 1e-2f, LoggingSteps = 1 }, // one batch of all rows: the same loss each step measures
            Generation = { MaxNewTokens = 4, BatchSize = 2 },
            Progress = new Sync(p => losses.Add(p.Loss)),
        };
        var data = ml.Data.LoadFromEnumerable(Rows());
        using var model = ml.Lora().CausalLm(options).Fit(data);

        var config = ModelConfig.Load(Path.Combine(Base, "config.json"));
        long all;
        using (var plain = ModelLoader.Load(Base)) all = PeftModel.DistinctParameters(plain).Sum(p => p.P.numel());
        long trainable = Trainable(config, Method(name));
        log.Should().Equal(PeftModel.FormatReport(trainable, all + trainable));
        output.WriteLine($"{name}: {log[0]}; losses {string.Join(", ", losses.Select(l => l.ToString("F4")))}");
        losses.Should().HaveCount(8);
        losses[^1].Should().BeLessThan(losses[0], "the adapter learns");

        var generated = model.Transform(data).GetColumn<string>("GeneratedText").ToList();
        string zip = Path.Combine(_root, $"{name}.zip");
        ml.Model.Save(model, data.Schema, zip);
        using (var archive = ZipFile.OpenRead(zip))
        {
            var json = JsonNode.Parse(Entry(archive, "Adapter/adapter_config.json"))!;
            json["peft_type"]!.GetValue<string>().Should().Be(peftType);
            json["base_model_name_or_path"]!.GetValue<string>().Should().Be(Base);
            using var temp = new TempFolder();
            File.WriteAllBytes(Path.Combine(temp.Path, "a.safetensors"), EntryBytes(archive, "Adapter/adapter_model.safetensors"));
            using var weights = SafeTensorsFile.Open(Path.Combine(temp.Path, "a.safetensors"));
            var keys = weights.Tensors.Select(t => t.Name).ToList();
            if (Method(name) is PromptLearningConfig pl)
            {
                long width = pl is PrefixTuningConfig ? 2L * config.NumLayers * config.NumKeyValueHeads * config.HeadDim : config.HiddenSize;
                keys.Should().Equal("prompt_embeddings");
                weights.Info("prompt_embeddings").Shape.Should().Equal(pl.NumVirtualTokens, width);
                json["num_virtual_tokens"]!.GetValue<int>().Should().Be(pl.NumVirtualTokens);
            }
            else
            {
                keys.Should().OnlyContain(k => k.StartsWith("base_model.model.transformer.h.", StringComparison.Ordinal)
                    && k.EndsWith(name == "ia3" ? ".ia3_l" : ".weight", StringComparison.Ordinal));
                weights.Tensors.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b)).Should().Be(trainable);
            }
            if (name == "prompt-tuning-text") json["tokenizer_name_or_path"]!.GetValue<string>().Should().Be(Base, "TEXT init without a tokenizer uses the base model's");
        }

        var ml2 = new MLContext(seed: 9);
        var loaded = ml2.Model.Load(zip, out _);
        try
        {
            loaded.Transform(ml2.Data.LoadFromEnumerable(Rows())).GetColumn<string>("GeneratedText").Should().Equal(generated);
            ((LoraCausalLmTransformer)loaded).Options.Method?.PeftType.Should().Be(name == "lora" ? null : peftType);
        }
        finally { ((IDisposable)loaded).Dispose(); }
    }

    [Fact]
    public void A_method_with_changed_lora_options_is_refused_naming_both()
    {
        var ml = new MLContext(seed: 1);
        var options = new LoraCausalLmOptions { BaseModelFolder = Base, Method = new IA3Config(), Lora = { Rank = 16 } };
        var act = () => ml.Lora().CausalLm(options);
        act.Should().Throw<ArgumentOutOfRangeException>().WithMessage("LoraCausalLmOptions.Method is IA3: leave Lora at its defaults*");
    }

    private static string Entry(ZipArchive archive, string suffix) => System.Text.Encoding.UTF8.GetString(EntryBytes(archive, suffix));

    private static byte[] EntryBytes(ZipArchive archive, string suffix)
    {
        var entry = archive.Entries.Single(e => e.FullName.Replace('\\', '/').EndsWith(suffix, StringComparison.Ordinal));
        using var stream = entry.Open();
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }

    private sealed class Sync(Action<LoraTrainingProgress> a) : IProgress<LoraTrainingProgress> { public void Report(LoraTrainingProgress p) => a(p); }
}
