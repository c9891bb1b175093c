using Microsoft.ML.Data;
using Microsoft.ML.Lora.Tests.MLNet;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// Prompt and completion lengths are bounded against the model's context before any forward pass: Fit cuts long
/// examples to MaxSequenceLength; generation refuses a prompt whose tokens plus MaxNewTokens exceed the context,
/// naming the row and column, or keeps its last tokens when LongPrompts = TruncateLeft. BLOOM (ALiBi) has no context
/// of its own: the configured MaxSequenceLength is used. The tiny models' tokenizer has one token per byte.
/// </summary>
public sealed class LengthBoundTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static Row[] Rows(params string[] prompts) => prompts.Select(p => new Row { Prompt = p, Completion = "ok" }).ToArray();

    private LoraCausalLmTransformer Fit(MLContext ml, string modelType, params Row[] rows) =>
        ml.Lora().CausalLm(new LoraCausalLmOptions
        {
            BaseModelFolder = TinyBaseModel.Create(_temp.File("tiny-" + modelType), modelType, hiddenSize: 32, layers: 1, heads: 4, seed: 3),
            Seed = 5,
            Lora = { Rank = 2, Alpha = 4 },
            Training = { MaxSteps = 1, BatchSize = 2, MaxSequenceLength = 64 },
            Generation = { MaxNewTokens = 6, BatchSize = 2 },
        }).Fit(ml.Data.LoadFromEnumerable(rows));

    [Fact]
    public void Bloom_generation_refuses_a_prompt_longer_than_MaxSequenceLength_naming_the_row_or_keeps_its_end()
    {
        var ml = new MLContext(seed: 1);
        var log = new List<string>();
        ml.Log += (_, e) => { lock (log) log.Add(e.RawMessage); };
        string tail = string.Concat(Enumerable.Range(0, 53).Select(i => (char)('a' + i % 26))) + " ->: "; // 58 bytes
        string longPrompt = new string('x', 20_000) + tail;

        // Fit: the 20,000-token example is cut to MaxSequenceLength (64) before the forward pass.
        using var model = Fit(ml, "bloom", Rows("sky ->: ", longPrompt));
        lock (log) log.Should().Contain(m => m.Contains("1 examples cut to the context length"));

        var data = ml.Data.LoadFromEnumerable(Rows("sky ->: ", "grass ->: ", longPrompt, "snow ->: "));
        var read = () => model.Transform(data).GetColumn<string>("GeneratedText").ToList();
        read.Should().Throw<DataRowException>()
            .WithMessage("Row 2 (counting from 0), column 'Prompt': the prompt has 20058 tokens; with MaxNewTokens 6 that exceeds the model's context of 64 tokens (LoraTrainingOptions.MaxSequenceLength, since the model has no fixed context)*LongPrompts = TruncateLeft*58*")
            .Which.Row.Should().Be(2);

        var engine = ml.Model.CreatePredictionEngine<Question, Answer>(model);
        var predict = () => engine.Predict(new Question { Prompt = longPrompt });
        predict.Should().Throw<DataRowException>().WithMessage("Column 'Prompt' of the row: the prompt has 20058 tokens*")
            .Which.ColumnName.Should().Be("Prompt");

        model.Generation.LongPrompts = LongPromptPolicy.TruncateLeft;
        var truncated = read();
        truncated[2].Should().Be(model.Transform(ml.Data.LoadFromEnumerable(Rows(tail))).GetColumn<string>("GeneratedText").Single(),
            "the prompt keeps its last 64 - 6 tokens");
        engine.Predict(new Question { Prompt = longPrompt }).GeneratedText.Should().Be(truncated[2]);

        model.Generation.MaxNewTokens = 64;
        read.Should().Throw<ArgumentOutOfRangeException>().WithMessage("LoraGenerationOptions.MaxNewTokens (64) leaves no room for a prompt in the model's context of 64 tokens*");
    }

    [Fact]
    public void Prompt_tuning_generation_leaves_the_virtual_tokens_their_positions()
    {
        var ml = new MLContext(seed: 1);
        using var model = ml.Lora().CausalLm(new LoraCausalLmOptions
        {
            BaseModelFolder = TinyBaseModel.Create(_temp.File("tiny-gpt2-prompt"), "gpt2", hiddenSize: 32, layers: 1, heads: 4, seed: 3),
            Seed = 5,
            Method = new Lora.Peft.PromptTuningConfig { NumVirtualTokens = 8 },
            Training = { MaxSteps = 1, BatchSize = 2, MaxSequenceLength = 64 },
            Generation = { MaxNewTokens = 6, BatchSize = 2 },
        }).Fit(ml.Data.LoadFromEnumerable(Rows("sky ->: ", "grass ->: ")));

        // 498 + 6 new tokens + 8 virtual tokens = 512 positions: fits; one more byte does not.
        var fits = model.Transform(ml.Data.LoadFromEnumerable(Rows(new string('y', 498)))).GetColumn<string>("GeneratedText").Single();
        fits.Should().NotBeNull();
        var read = () => model.Transform(ml.Data.LoadFromEnumerable(Rows(new string('y', 499)))).GetColumn<string>("GeneratedText").ToList();
        read.Should().Throw<DataRowException>()
            .WithMessage("Row 0 (counting from 0), column 'Prompt': the prompt has 499 tokens; with MaxNewTokens 6 that exceeds the model's context of 504 tokens (max_position_embeddings of its config.json, 512, less the adapter's 8 virtual tokens)*");
    }

    [Fact]
    public void Gpt2_generation_refuses_a_prompt_past_n_positions_with_the_librarys_error()
    {
        var ml = new MLContext(seed: 1);
        using var model = Fit(ml, "gpt2", Rows("sky ->: ", "grass ->: "));

        var data = ml.Data.LoadFromEnumerable(Rows("sky ->: ", new string('y', 600)));
        var read = () => model.Transform(data).GetColumn<string>("GeneratedText").ToList();
        read.Should().Throw<DataRowException>()
            .WithMessage("Row 1 (counting from 0), column 'Prompt': the prompt has 600 tokens; with MaxNewTokens 6 that exceeds the model's context of 512 tokens (max_position_embeddings of its config.json)*");
    }
}
