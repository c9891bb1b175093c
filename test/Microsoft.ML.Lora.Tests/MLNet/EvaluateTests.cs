using Microsoft.ML.Data;
using Microsoft.ML.Lora.MLNet;
using Microsoft.ML.Lora.Tokenization;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>
/// <c>mlContext.Lora().Evaluate</c>: token loss and perplexity checked against a hand computation from the model's
/// logits (real backend), the micro-average and the column plumbing (fake backend), and exact match and tag-set
/// precision/recall/F1 on hand-written strings.
/// </summary>
[Collection("TorchGlobalRng")]
public sealed class EvaluateTests : MLNetTestBase
{
    public sealed class Scored
    {
        public string Prompt { get; set; } = "";
        public string Completion { get; set; } = "";
        public string GeneratedText { get; set; } = "";
    }

    [Fact]
    public void Loss_is_the_micro_average_over_all_completion_tokens_and_perplexity_its_exp()
    {
        var ml = new MLContext(seed: 1);
        var rows = new[] { new Row { Prompt = "ab", Completion = "xyz" }, new Row { Prompt = "", Completion = "q" } };
        using var model = Trainer(ml).Fit(ml.Data.LoadFromEnumerable(rows));

        var metrics = ml.Lora().Evaluate(ml.Data.LoadFromEnumerable(rows), model);

        // Fake backend: row "ab"/"xyz" has 3 + 1 (EOS) tokens at 0.3 each, row ""/"q" 1 + 1 tokens at 0.1 each.
        metrics.RowCount.Should().Be(2);
        metrics.CompletionTokenCount.Should().Be(6);
        metrics.MeanTokenLoss.Should().BeApproximately((4 * 0.3 + 2 * 0.1) / 6, 1e-12, "micro-average, not (0.3 + 0.1) / 2");
        metrics.Perplexity.Should().BeApproximately(Math.Exp(1.4 / 6), 1e-12);
        metrics.ExactMatch.Should().BeNull();
        metrics.TagPrecision.Should().BeNull();
        metrics.TagRecall.Should().BeNull();
        metrics.TagF1.Should().BeNull();
        FakeOf(model).Settings.Should().BeEmpty("without a reference column nothing is generated");
    }

    [Fact]
    public void Scored_data_is_read_as_it_is_and_tag_metrics_follow_the_documented_formulas()
    {
        var ml = new MLContext(seed: 1);
        using var model = Trainer(ml).Fit(ml.Data.LoadFromEnumerable(Rows(2)));
        var scored = ml.Data.LoadFromEnumerable(new[]
        {
            new Scored { Prompt = "q1", Completion = "life, hope, death", GeneratedText = "love, life, Hope" }, // TP 2, |G| 3, |T| 3
            new Scored { Prompt = "q2", Completion = "humor", GeneratedText = "  humor \n" },                   // exact after trimming
            new Scored { Prompt = "q3", Completion = "", GeneratedText = "" },                                  // exact, no tags
            new Scored { Prompt = "q4", Completion = "Truth, wisdom", GeneratedText = "truth, truth" },        // TP 1, |G| 1 (a set), |T| 2
        });

        var metrics = ml.Lora().Evaluate(scored, model, referenceColumnName: "Completion");

        metrics.ExactMatch.Should().Be(0.5);
        metrics.TagPrecision.Should().BeApproximately(4.0 / 5, 1e-12);
        metrics.TagRecall.Should().BeApproximately(4.0 / 6, 1e-12);
        metrics.TagF1.Should().BeApproximately(8.0 / 11, 1e-12);
        FakeOf(model).Settings.Should().BeEmpty("the generated column of scored data is read, not generated again");
    }

    [Theory]
    [InlineData(new[] { "", " , " }, new[] { "a", "b, c" }, 0.0, 0.0, 0.0)]  // nothing generated, references exist
    [InlineData(new[] { "", "" }, new[] { " ", "" }, 1.0, 1.0, 1.0)]          // no tags on either side
    [InlineData(new[] { "a", "b" }, new[] { "", "" }, 0.0, 0.0, 0.0)]          // tags generated, no references
    [InlineData(new[] { "a;b", "c" }, new[] { "a", "c" }, 0.5, 0.5, 0.5)]    // ";" is not the separator: "a;b" is one tag
    public void Empty_tag_sets_follow_the_documented_cases(string[] generated, string[] reference, double precision, double recall, double f1)
    {
        var counts = TagSets.Count(generated.Zip(reference), ",");
        var metrics = new LoraCausalLmMetrics(generated.Length, 1, 0, counts);
        metrics.TagPrecision.Should().BeApproximately(precision, 1e-12);
        metrics.TagRecall.Should().BeApproximately(recall, 1e-12);
        metrics.TagF1.Should().BeApproximately(f1, 1e-12);
    }

    [Fact]
    public void Raw_rows_are_generated_and_a_custom_separator_splits_tags()
    {
        var ml = new MLContext(seed: 1);
        using var model = Trainer(ml, batchSize: 2).Fit(ml.Data.LoadFromEnumerable(Rows(3)));
        string tag = FakeOf(model).Tag;
        // The fake completes "ab" as "ba|<tag>": with "|" as the separator its tags are {"ba", tag}.
        var rows = new[]
        {
            new Row { Prompt = "ab", Completion = FakeTextGenerator.Complete("ab", tag) },   // exact, TP 2
            new Row { Prompt = "cd", Completion = "dc|other" },                                // TP 1 of 2
            new Row { Prompt = "ef", Completion = "x" },                                       // TP 0 of 1
        };

        var metrics = ml.Lora().Evaluate(ml.Data.LoadFromEnumerable(rows), model, referenceColumnName: "Completion", tagSeparator: "|");

        metrics.ExactMatch.Should().BeApproximately(1.0 / 3, 1e-12);
        metrics.TagPrecision.Should().BeApproximately(3.0 / 6, 1e-12);
        metrics.TagRecall.Should().BeApproximately(3.0 / 5, 1e-12);
        FakeOf(model).BatchSizes.Sum().Should().Be(3, "each row generated once");
    }

    [Fact]
    public void Missing_columns_and_models_without_a_LoRA_step_are_named()
    {
        var ml = new MLContext(seed: 1);
        using var model = Trainer(ml).Fit(ml.Data.LoadFromEnumerable(Rows(2)));
        var onlyPrompts = ml.Data.LoadFromEnumerable(new[] { new Question { Prompt = "a" } });
        var act = () => ml.Lora().Evaluate(onlyPrompts, model);
        act.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*Could not find completion column 'Completion'*");
        var noReference = () => ml.Lora().Evaluate(ml.Data.LoadFromEnumerable(Rows(2)), model, referenceColumnName: "Tags");
        noReference.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*Could not find reference column 'Tags'*");
        var notLora = () => ml.Lora().Evaluate(onlyPrompts, ml.Transforms.CopyColumns("P", "Prompt").Fit(onlyPrompts));
        notLora.Should().Throw<ArgumentException>().WithMessage("*has no LoraCausalLmTransformer*");
    }

    /// <summary>
    /// The real backend through a saved and loaded chain (ConcatenateText builds the prompt): the loss equals a sum of
    /// -log_softmax(logits)[next token] over each row's completion tokens and EOS, computed here row by row.
    /// </summary>
    [Fact]
    public void Token_loss_and_perplexity_match_a_hand_computation_from_the_logits()
    {
        string baseModel = TinyBaseModel.Create(Path.Combine(Root, "tiny"), "bloom", hiddenSize: 32, layers: 2, heads: 4, seed: 3);
        var ml = new MLContext(seed: 1);
        var rows = new[]
        {
            new QuoteRow { Quote = "sky", Tags = "blue, air" },
            new QuoteRow { Quote = "grass", Tags = "green" },
            new QuoteRow { Quote = "", Tags = "empty" },
        };
        var data = ml.Data.LoadFromEnumerable(rows);
        var pipeline = ml.Transforms.Text.ConcatenateText("Prompt", ["Quote"], suffix: " ->: ")
            .Append(ml.Lora().CausalLm(new LoraCausalLmOptions
            {
                BaseModelFolder = baseModel,
                CompletionColumnName = "Tags",
                Seed = 5,
                Lora = { Rank = 4, Alpha = 8, Dropout = 0.1f },
                Training = { MaxSteps = 3, BatchSize = 2, LearningRate = 1e-2f },
                Generation = { MaxNewTokens = 4 },
            }));
        var fitted = pipeline.Fit(data);
        string zip = Path.Combine(Root, "model.zip");
        ml.Model.Save(fitted, data.Schema, zip);
        fitted.LastTransformer.Dispose();

        var loaded = ml.Model.Load(zip, out _);
        try
        {
            var metrics = ml.Lora().Evaluate(data, loaded, referenceColumnName: "Tags");

            var lora = (LoraCausalLmTransformer)((IEnumerable<ITransformer>)loaded).Last();
            var peft = ((TorchSharpTextGenerator)typeof(SharedTextGenerator).GetField("_generator", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)!
                .GetValue(lora.Generator)!).Model;
            var tokenizer = HfTokenizer.Load(baseModel);
            int eos = TinyBaseModel.VocabSize - 1;
            double sum = 0; long count = 0;
            using (no_grad())
                foreach (var row in rows)
                {
                    using var scope = NewDisposeScope();
                    int[] prompt = tokenizer.Encode(row.Quote + " ->: ", addSpecialTokens: true);
                    int[] ids = [.. prompt, .. tokenizer.Encode(row.Tags, addSpecialTokens: false), eos];
                    var logits = peft.Forward(tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length]));
                    var logp = logits[0].to(ScalarType.Float64).log_softmax(-1);
                    for (int i = prompt.Length; i < ids.Length; i++)
                        sum -= logp[i - 1, ids[i]].item<double>();
                    count += ids.Length - prompt.Length;
                }

            metrics.RowCount.Should().Be(3);
            metrics.CompletionTokenCount.Should().Be(count);
            metrics.MeanTokenLoss.Should().BeApproximately(sum / count, 1e-5 * sum / count);
            metrics.Perplexity.Should().BeApproximately(Math.Exp(sum / count), 1e-5 * Math.Exp(sum / count));

            var generated = loaded.Transform(data).GetColumn<string>("GeneratedText").ToList();
            metrics.ExactMatch.Should().Be(generated.Zip(rows).Count(p => p.First.Trim() == p.Second.Tags.Trim()) / 3.0);
        }
        finally { ((IDisposable)loaded).Dispose(); }
    }

    public sealed class QuoteRow
    {
        public string Quote { get; set; } = "";
        public string Tags { get; set; } = "";
    }
}
