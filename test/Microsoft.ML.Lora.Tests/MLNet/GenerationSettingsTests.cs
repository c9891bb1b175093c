using Microsoft.ML.Lora.Generation;

namespace Microsoft.ML.Lora.Tests.MLNet;

public sealed class QuoteOnly
{
    public string Quote { get; set; } = "";
}

public sealed class GeneratedTags
{
    public string GeneratedText { get; set; } = "";
}

/// <summary>Generation settings after Fit and Load, sampling, seeds, option checks and prediction without the completion column (fake backend).</summary>
public sealed class GenerationSettingsTests : MLNetTestBase
{
    [Fact]
    public void Generation_settings_changed_after_Fit_reach_the_generator_and_are_saved()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(3));
        string zip = Path.Combine(Root, "model.zip");
        using (var model = Trainer(ml).Fit(data))
        {
            model.Generation.MaxNewTokens = 5;
            model.Generation.StopStrings = ["\n"];
            Column(model.Transform(data), "GeneratedText");
            FakeOf(model).Settings.Should().OnlyContain(g => g.MaxNewTokens == 5 && g.StopStrings.SequenceEqual(new[] { "\n" }));
            model.Generation = new LoraGenerationOptions { MaxNewTokens = 7, BatchSize = 1 };
            Column(model.Transform(data), "GeneratedText");
            FakeOf(model).BatchSizes.Should().EndWith(new[] { 1, 1, 1 }, "the batch size is read when a cursor is made");
            ml.Model.Save(model, data.Schema, zip);
        }
        var lora = (LoraCausalLmTransformer)new MLContext(seed: 2).Model.Load(zip, out _);
        lora.Generation.MaxNewTokens.Should().Be(7);
        lora.Generation.MaxNewTokens = 3;
        Column(lora.Transform(data), "GeneratedText");
        FakeOf(lora).Settings.Should().OnlyContain(g => g.MaxNewTokens == 3);
        lora.Dispose();
    }

    [Fact]
    public void Out_of_range_settings_are_refused_naming_the_option()
    {
        var ml = new MLContext(seed: 1);
        var negativeAlpha = () => ml.Lora().CausalLm(new LoraCausalLmOptions { BaseModelFolder = BaseFolder, Lora = { Alpha = -16 } });
        negativeAlpha.Should().Throw<ArgumentOutOfRangeException>().WithMessage("LoraCausalLmOptions.Lora.Alpha must be a positive finite number, got -16*");
        var temperature = () => ml.Lora().CausalLm(new LoraCausalLmOptions { BaseModelFolder = BaseFolder, Generation = { Temperature = -0.5f } });
        temperature.Should().Throw<ArgumentOutOfRangeException>().WithMessage("LoraGenerationOptions.Temperature must be 0 (greedy) or a positive finite number, got -0.5*");

        using var model = Trainer(ml).Fit(ml.Data.LoadFromEnumerable(Rows(2)));
        var set = () => model.Generation = new LoraGenerationOptions { TopP = 0 };
        set.Should().Throw<ArgumentOutOfRangeException>().WithMessage("LoraGenerationOptions.TopP must be in (0, 1], got 0*");
        model.Generation.Temperature = float.NaN;
        var read = () => Column(model.Transform(ml.Data.LoadFromEnumerable(Rows(2))), "GeneratedText");
        read.Should().Throw<ArgumentOutOfRangeException>().WithMessage("LoraGenerationOptions.Temperature must be 0 (greedy) or a positive finite number, got NaN*");
    }

    [Fact]
    public void The_ML_NET_options_have_the_defaults_of_the_lower_level_options()
    {
        var peft = new Microsoft.ML.Lora.Peft.LoraConfig();
        var lora = new LoraAdapterOptions();
        (lora.Rank, (double)lora.Alpha, (double)lora.Dropout).Should().Be((peft.R, peft.LoraAlpha, peft.LoraDropout));
        var trainer = new Microsoft.ML.Lora.Training.TrainingOptions();
        var training = new LoraTrainingOptions();
        ((double)training.LearningRate).Should().BeApproximately(trainer.LearningRate, 1e-9);
        (training.Epochs, training.BatchSize, training.GradientAccumulationSteps, training.LrScheduler, training.WarmupRatio, training.WeightDecay, training.MaxGradNorm, training.LoggingSteps)
            .Should().Be(((int)trainer.NumEpochs, trainer.BatchSize, trainer.GradientAccumulationSteps, trainer.LrScheduler, trainer.WarmupRatio, trainer.WeightDecay, trainer.MaxGradNorm, trainer.LoggingSteps));
    }

    [Fact]
    public void Without_a_Seed_the_MLContext_seed_decides()
    {
        int SeedOf(int contextSeed)
        {
            var ml = new MLContext(seed: contextSeed);
            var trainer = ml.Lora().CausalLm(new LoraCausalLmOptions { BaseModelFolder = BaseFolder }, new FakeTextGeneratorFactory());
            using var model = trainer.Fit(ml.Data.LoadFromEnumerable(Rows(2)));
            return model.Options.Seed!.Value;
        }
        SeedOf(3).Should().Be(SeedOf(3));
        SeedOf(3).Should().NotBe(SeedOf(4));
    }

    [Fact]
    public void ResetSampling_restarts_the_generator_from_the_seed()
    {
        var ml = new MLContext(seed: 1);
        using var model = Trainer(ml, seed: 7).Fit(ml.Data.LoadFromEnumerable(Rows(2)));
        model.ResetSampling();
        model.ResetSampling(11);
        FakeOf(model).Resets.Should().Equal(7, 11);
    }

    [Fact]
    public void The_documented_tokenized_pipeline_scores_rows_without_the_completion_column()
    {
        string folder = TinyBaseModel.Create(Path.Combine(Root, "tiny"), hiddenSize: 16, layers: 1, heads: 2);
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new QuoteRow { Quote = "Be yourself.", Tags = "honesty" }, new QuoteRow { Quote = "Less", Tags = "design" } });
        var pipeline = ml.Transforms.Text.ConcatenateText("Prompt", ["Quote"], suffix: " ->: ")
            .Append(ml.Lora().Tokenize(folder, "PromptIds", "Prompt"))
            .Append(ml.Lora().Tokenize(folder, "CompletionIds", "Tags", addSpecialTokens: false))
            .Append(ml.Lora().CausalLm(new LoraCausalLmOptions
            {
                BaseModelFolder = folder, PromptTokensColumnName = "PromptIds", CompletionTokensColumnName = "CompletionIds", Seed = 7,
            }, new FakeTextGeneratorFactory()));
        var model = pipeline.Fit(data);
        var prompt = "Be yourself. ->: ";
        string expected = "ids:" + string.Join(",", prompt.Select(c => (int)c).Reverse()) + "|n2-r8";

        using (var engine = ml.Model.CreatePredictionEngine<QuoteOnly, GeneratedTags>(model))
            engine.Predict(new QuoteOnly { Quote = "Be yourself." }).GeneratedText.Should().Be(expected);

        string zip = Path.Combine(Root, "tagger.zip");
        ml.Model.Save(model, data.Schema, zip);
        model.LastTransformer.Dispose();
        var ml2 = new MLContext(seed: 2);
        var loaded = ml2.Model.Load(zip, out _);
        var rows = ml2.Data.LoadFromEnumerable(new[] { new QuoteOnly { Quote = "Be yourself." } });
        Column(loaded.Transform(rows), "GeneratedText").Should().Equal(expected);
        ((IDisposable)loaded).Dispose();
    }

    [Theory]
    [InlineData("st|op", true)]            // split over two tokens, ends with the last
    [InlineData("x|stop", true)]           // inside the last token
    [InlineData("la|stopper", true)]       // overhangs the last token's end
    [InlineData("sto|pper", true)]         // starts in an earlier token, overhangs
    [InlineData("stop|at", false)]         // further back: it would have stopped at the token before
    [InlineData("st|op|at", false)]
    [InlineData("sto|p|", false)]          // an empty last token adds no text
    public void A_stop_string_counts_only_when_it_ends_within_the_last_token(string tokens, bool stops)
    {
        var parts = tokens.Split('|');
        string text = string.Concat(parts);
        int lastTokenStart = text.Length - parts[^1].Length;
        GenerationSession.EndsInLastToken(text, lastTokenStart, "stop").Should().Be(stops);
    }
}
