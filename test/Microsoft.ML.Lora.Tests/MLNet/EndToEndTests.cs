using System.Diagnostics;
using Microsoft.ML.Data;
using System.IO.Compression;
using Microsoft.ML.Lora.MLNet;

namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>
/// The real TorchSharp backend through the ML.NET pipeline: a tiny random BLOOM with a byte-level tokenizer is
/// fine-tuned for a few steps, generates for every row, and survives Save/Load with an adapter-only zip.
/// </summary>
[Collection("TorchGlobalRng")]
public sealed class EndToEndTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), "mllora-e2e-" + Guid.NewGuid().ToString("N"));
    private readonly string _base;

    public EndToEndTests()
    {
        _base = TinyBaseModel.Create(Path.Combine(_root, "tiny-bloom"), "bloom", hiddenSize: 32, layers: 2, heads: 4, seed: 3);
    }

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
        new() { Prompt = "", Completion = "empty" },
    ];

    private LoraCausalLmOptions Options(int maxNewTokens = 6) => new()
    {
        BaseModelFolder = _base,
        Seed = 5,
        Lora = { Rank = 4, Alpha = 8, Dropout = 0f },
        Training = { Epochs = 1, MaxSteps = 6, BatchSize = 2, LearningRate = 1e-2f, LoggingSteps = 2 },
        Generation = { MaxNewTokens = maxNewTokens, BatchSize = 2 },
    };

    [Fact]
    public void Fit_transform_predict_save_and_load_with_the_TorchSharp_backend()
    {
        var clock = Stopwatch.StartNew();
        var ml = new MLContext(seed: 1);
        var log = new List<string>();
        ml.Log += (_, e) => { if (e.RawMessage.Contains("step ") || e.RawMessage.Contains("trainable params")) lock (log) log.Add(e.RawMessage); };
        var data = ml.Data.LoadFromEnumerable(Rows());

        using var model = ml.Lora().CausalLm(Options()).Fit(data);

        log.Should().Contain(m => m.StartsWith("trainable params: ", StringComparison.Ordinal) && m.Contains("|| all params:"));
        log.Should().Contain(m => m.StartsWith("step 6/6: loss ", StringComparison.Ordinal));

        var generated = model.Transform(data).GetColumn<string>("GeneratedText").ToList();
        generated.Should().HaveCount(5).And.OnlyContain(t => t != null);
        generated.Should().OnlyContain(t => !t.Contains(TinyBaseModel.EndOfText));

        using (var engine = ml.Model.CreatePredictionEngine<Question, Answer>(model))
            for (int i = 0; i < Rows().Length; i++)
                engine.Predict(new Question { Prompt = Rows()[i].Prompt }).GeneratedText.Should().Be(generated[i], $"row {i} alone equals row {i} in a batch (left padding, greedy)");

        string zip = Path.Combine(_root, "model.zip");
        ml.Model.Save(model, data.Schema, zip);

        var ml2 = new MLContext(seed: 99);
        var loaded = ml2.Model.Load(zip, out _);
        try
        {
            loaded.Transform(ml2.Data.LoadFromEnumerable(Rows())).GetColumn<string>("GeneratedText").Should().Equal(generated);
        }
        finally { ((IDisposable)loaded).Dispose(); }

        using var archive = ZipFile.OpenRead(zip);
        var adapter = archive.Entries.Single(e => e.FullName.Replace('\\', '/').EndsWith("Adapter/adapter_model.safetensors", StringComparison.Ordinal));
        long baseBytes = new FileInfo(Path.Combine(_base, "model.safetensors")).Length;
        adapter.Length.Should().BeLessThan(baseBytes / 2);
        new FileInfo(zip).Length.Should().BeLessThan(adapter.Length + 8 * 1024, "the zip holds the adapter, options and the base model reference, never base weights");
        archive.Entries.Should().NotContain(e => e.FullName.EndsWith("/model.safetensors", StringComparison.Ordinal));
        clock.Elapsed.Should().BeLessThan(TimeSpan.FromSeconds(30));
    }

    public sealed class WordRow
    {
        public string Word { get; set; } = "";
        public string Hint { get; set; } = "";
        public string Completion { get; set; } = "";
    }

    private static WordRow[] WordRows() =>
    [
        new() { Word = "sky", Hint = "color", Completion = "blue" },
        new() { Word = "grass", Hint = "color", Completion = "green" },
        new() { Word = "snow", Hint = "", Completion = "white" },
    ];

    [Fact]
    public void ConcatenateText_Tokenize_CausalLm_generates_as_the_text_columns_do()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(WordRows());

        var textOptions = Options();
        using var textModel = ml.Transforms.Text.ConcatenateText("Prompt", " ->: ", "Word", "Hint")
            .Append(ml.Lora().CausalLm(textOptions)).Fit(data).LastTransformer;
        var textPrompts = ml.Transforms.Text.ConcatenateText("Prompt", " ->: ", "Word", "Hint").Fit(data).Transform(data);
        var expected = textModel.Transform(textPrompts).GetColumn<string>("GeneratedText").ToList();

        var tokenOptions = Options();
        tokenOptions.PromptTokensColumnName = "PromptIds";
        tokenOptions.CompletionTokensColumnName = "CompletionIds";
        var model = ml.Transforms.Text.ConcatenateText("Prompt", " ->: ", "Word", "Hint")
            .Append(ml.Lora().Tokenize(_base, "PromptIds", "Prompt"))
            .Append(ml.Lora().Tokenize(_base, "CompletionIds", "Completion", addSpecialTokens: false))
            .Append(ml.Lora().CausalLm(tokenOptions))
            .Fit(data);
        try
        {
            var generated = model.Transform(data).GetColumn<string>("GeneratedText").ToList();
            generated.Should().Equal(expected, "the same prompts as token ids, the same seed");
            generated.Should().HaveCount(3).And.OnlyContain(t => t != null).And.Contain(t => t.Length > 0, "an all-empty generation would match trivially");

            string zip = Path.Combine(_root, "tokens.zip");
            ml.Model.Save(model, data.Schema, zip);
            var ml2 = new MLContext(seed: 9);
            var loaded = ml2.Model.Load(zip, out _);
            try
            {
                loaded.Transform(ml2.Data.LoadFromEnumerable(WordRows())).GetColumn<string>("GeneratedText").Should().Equal(expected);
            }
            finally { foreach (var t in (IEnumerable<ITransformer>)loaded) (t as IDisposable)?.Dispose(); }
        }
        finally { model.LastTransformer.Dispose(); }
    }

    [Fact]
    public void Token_ids_outside_the_vocabulary_are_refused()
    {
        var config = Microsoft.ML.Lora.Models.ModelConfig.Load(Path.Combine(_base, "config.json"));
        var tokenizer = BackendTokenizer.Load(_base);
        var act = () => TorchSharpTextGeneratorFactory.PromptIds(tokenizer, new[] { 5, TinyBaseModel.VocabSize }, config);
        act.Should().Throw<ArgumentOutOfRangeException>().WithMessage($"Token id {TinyBaseModel.VocabSize} is outside the vocabulary*0 to {TinyBaseModel.VocabSize - 1}*");
        TorchSharpTextGeneratorFactory.PromptIds(tokenizer, Array.Empty<int>(), config).Should().Equal(TinyBaseModel.VocabSize - 1);
    }

    [Fact]
    public void Training_lowers_the_loss_and_the_adapter_is_PEFT()
    {
        var ml = new MLContext(seed: 1);
        var losses = new List<double>();
        ml.Log += (_, e) =>
        {
            var m = System.Text.RegularExpressions.Regex.Match(e.RawMessage, @"^step \d+/\d+: loss ([0-9.]+)");
            if (m.Success) lock (losses) losses.Add(double.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
        };
        var rows = Enumerable.Repeat(new Row { Prompt = "a ->: ", Completion = "xyz" }, 4).ToArray();
        var options = Options();
        options.Training.MaxSteps = 40;
        options.Training.LoggingSteps = 1;
        options.Training.LrScheduler = Microsoft.ML.Lora.Training.LrSchedulerType.Constant;
        using var model = ml.Lora().CausalLm(options).Fit(ml.Data.LoadFromEnumerable(rows));

        losses.Should().HaveCount(40);
        losses[^1].Should().BeLessThan(losses[0] * 0.5);
        model.Transform(ml.Data.LoadFromEnumerable(rows)).GetColumn<string>("GeneratedText").First().Should().Be("xyz");

        var folder = Path.Combine(_root, "adapter");
        Directory.CreateDirectory(folder);
        model.Generator.SaveAdapter(folder);
        var config = File.ReadAllText(Path.Combine(folder, "adapter_config.json"));
        config.Should().Contain("\"peft_type\": \"LORA\"").And.Contain("\"r\": 4").And.Contain("query_key_value");
        File.Exists(Path.Combine(folder, "adapter_model.safetensors")).Should().BeTrue();
    }

    [Fact]
    public void A_GPT2_base_trains_saves_and_loads_with_Conv1D_targets()
    {
        var folder = TinyBaseModel.Create(Path.Combine(_root, "tiny-gpt2"), "gpt2", hiddenSize: 32, layers: 2, heads: 4, seed: 4);
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows());
        var options = Options();
        options.BaseModelFolder = folder;
        options.Training.MaxSteps = 3;
        var log = new List<string>();
        ml.Log += (_, e) => { lock (log) log.Add(e.RawMessage); };
        var stderr = new StringWriter();
        var console = Console.Error;
        Console.SetError(stderr);
        LoraCausalLmTransformer model;
        try { model = ml.Lora().CausalLm(options).Fit(data); }
        finally { Console.SetError(console); }
        using var owned = model;
        log.Should().Contain("fan_in_fan_out is set to False but the target module is `Conv1D`. Setting fan_in_fan_out to True.");
        stderr.ToString().Should().BeEmpty("PEFT's warning goes to the MLContext log");
        var generated = model.Transform(data).GetColumn<string>("GeneratedText").ToList();

        string zip = Path.Combine(_root, "gpt2.zip");
        ml.Model.Save(model, data.Schema, zip);
        var ml2 = new MLContext(seed: 2);
        var loaded = ml2.Model.Load(zip, out _);
        try { loaded.Transform(ml2.Data.LoadFromEnumerable(Rows())).GetColumn<string>("GeneratedText").Should().Equal(generated); }
        finally { ((IDisposable)loaded).Dispose(); }

        using var archive = ZipFile.OpenRead(zip);
        var config = new StreamReader(archive.Entries.Single(e => e.FullName.EndsWith("adapter_config.json", StringComparison.Ordinal)).Open()).ReadToEnd();
        config.Should().Contain("\"fan_in_fan_out\": true").And.Contain("c_attn");
    }

    [Fact]
    public void Sampling_advances_between_calls_and_repeats_after_a_reset()
    {
        var ml = new MLContext(seed: 1);
        using var model = ml.Lora().CausalLm(Options(maxNewTokens: 12)).Fit(ml.Data.LoadFromEnumerable(Rows()));
        model.Generation.Temperature = 1.5f;
        using var engine = ml.Model.CreatePredictionEngine<Question, Answer>(model);
        string Sample() => engine.Predict(new Question { Prompt = "sky ->: " }).GeneratedText;

        var first = new[] { Sample(), Sample() };
        first[1].Should().NotBe(first[0], "the sampling generator advances from one Predict to the next");
        model.ResetSampling(123);
        var a = new[] { Sample(), Sample() };
        model.ResetSampling(123);
        new[] { Sample(), Sample() }.Should().Equal(a);
        model.ResetSampling();
        new[] { Sample(), Sample() }.Should().Equal(first, "the model's own seed restarts the sequence it began with");
    }

    [Fact]
    public void A_stop_string_ends_generation_where_it_is_completed()
    {
        var ml = new MLContext(seed: 1);
        using var model = ml.Lora().CausalLm(Options(maxNewTokens: 12)).Fit(ml.Data.LoadFromEnumerable(Rows()));
        using var engine = ml.Model.CreatePredictionEngine<Question, Answer>(model);
        string full = engine.Predict(new Question { Prompt = "sky ->: " }).GeneratedText;
        full.Length.Should().BeGreaterThan(4);
        full.Should().MatchRegex("^[\\x20-\\x7e]+$", "one byte-level token per character here, so the cut is exact");
        string stop = full.Substring(2, 2);
        int end = full.IndexOf(stop, StringComparison.Ordinal) + stop.Length;

        model.Generation.StopStrings = [stop];
        engine.Predict(new Question { Prompt = "sky ->: " }).GeneratedText.Should().Be(full[..end]);
    }

    [Fact]
    public void Options_map_onto_PEFT_and_trainer_settings()
    {
        var o = Options();
        o.Lora.TargetModules = ["all-linear"];
        o.Training.WarmupRatio = 0.1;
        o.Training.GradientAccumulationSteps = 2;
        var lora = o.ToLoraConfig();
        lora.R.Should().Be(4);
        lora.LoraAlpha.Should().Be(8);
        lora.Scaling.Should().Be(2);
        lora.TargetModules.Should().Equal("all-linear");
        lora.BaseModelNameOrPath.Should().Be(_base);
        var t = TorchSharpTextGeneratorFactory.ToTrainingOptions(o, appendEos: true);
        t.MaxSteps.Should().Be(6);
        t.BatchSize.Should().Be(2);
        t.GradientAccumulationSteps.Should().Be(2);
        t.WarmupRatio.Should().Be(0.1);
        t.Seed.Should().Be(5);
        t.TrainOnPrompt.Should().BeFalse();
        t.AppendEos.Should().BeTrue();
        o.Training.MaxSteps = 0;
        TorchSharpTextGeneratorFactory.ToTrainingOptions(o, appendEos: true).MaxSteps.Should().Be(-1);

        o.DType = "bf16";
        TorchSharpTextGeneratorFactory.LoadOptions(o).DType.Should().Be(TorchSharp.torch.ScalarType.BFloat16);
        TorchSharpTextGeneratorFactory.LoadOptions(o).ComputeDType.Should().BeNull();
        o.ComputeDType = "float32";
        TorchSharpTextGeneratorFactory.LoadOptions(o).ComputeDType.Should().Be(TorchSharp.torch.ScalarType.Float32);
        o.Clone().ComputeDType.Should().Be("float32");
        o.ComputeDType = "tf32";
        var compute = () => TorchSharpTextGeneratorFactory.LoadOptions(o);
        compute.Should().Throw<ArgumentException>().WithMessage("LoraCausalLmOptions.ComputeDType 'tf32' is not supported*");
        o.ComputeDType = null;
        o.DType = "int8";
        var act = () => TorchSharpTextGeneratorFactory.LoadOptions(o);
        act.Should().Throw<ArgumentException>().WithMessage("LoraCausalLmOptions.DType 'int8' is not supported*");
    }

    [Fact]
    public void The_byte_level_tokenizer_round_trips_text()
    {
        var tokenizer = BackendTokenizer.Load(_base);
        var text = "Héllo, wörld! 123 ->: tags<|endoftext|>";
        var ids = tokenizer.Encode(text, addSpecialTokens: true);
        ids.Should().OnlyContain(i => i >= 0 && i < TinyBaseModel.VocabSize);
        ids[^1].Should().Be(TinyBaseModel.VocabSize - 1);
        tokenizer.EosId.Should().Be(TinyBaseModel.VocabSize - 1);
        tokenizer.Decode(ids).Should().Be("Héllo, wörld! 123 ->: tags");
    }
}
