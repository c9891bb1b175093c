using Microsoft.ML.Data;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Tests.MLNet;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// Token ids past the vocabulary and positions past a learned position table are the library's own errors, naming
/// the input (or the example, row and column), the value and the bound, never libtorch's "index out of bounds" with
/// a C++ stack. The fixture models have vocab_size 1000; GPT-2's n_positions is 128.
/// </summary>
public sealed class TokenBoundTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static void NoNativeTrace(Exception e)
    {
        e.Message.Should().NotContain("Exception raised from").And.NotContain("index out of range in self").And.NotContain(".cpp").And.NotContain(".h:");
    }

    [Theory]
    [InlineData("gpt2", 1000)]
    [InlineData("llama", 1000)]
    [InlineData("bloom", -1)]
    public void Forward_refuses_an_id_outside_the_vocabulary_naming_input_ids_and_the_bound(string arch, long bad)
    {
        using var scope = NewDisposeScope();
        using var model = CausalLm.FromPretrained(Fixtures.Model(arch));
        var ids = tensor(new long[] { 5, 6, 7, 8, 9, bad }, [2, 3]);

        var act = () => model.Forward(ids);

        var e = act.Should().Throw<ArgumentOutOfRangeException>()
            .WithMessage($"input_ids holds {bad} at [1, 2] (shape [2, 3]), outside 0 to 999: the model's vocabulary has 1000 ids (vocab_size in config.json)*").Which;
        NoNativeTrace(e);
    }

    [Fact]
    public void Gpt2_refuses_positions_past_n_positions_in_Forward_and_before_generating()
    {
        using var scope = NewDisposeScope();
        using var model = CausalLm.FromPretrained(Fixtures.Model("gpt2"));

        var forward = () => model.Forward(zeros(1, 130, dtype: ScalarType.Int64));
        NoNativeTrace(forward.Should().Throw<ArgumentOutOfRangeException>()
            .WithMessage("position_ids holds 129 at [0, 129] (shape [1, 130]), outside 0 to 127: GPT-2 has learned positions for 128 tokens (n_positions in config.json)*").Which);

        var generate = () => model.Generate([Enumerable.Repeat(5, 4).ToList(), Enumerable.Repeat(5, 120).ToList()],
            new GenerationOptions { MaxNewTokens = 16, EosTokenIds = [] });
        NoNativeTrace(generate.Should().Throw<ArgumentOutOfRangeException>()
            .WithMessage("Prompt 1 has 120 tokens; with MaxNewTokens 16 it would pass the 128 positions of the model (n_positions in config.json)*").Which);
        model.Generate(Enumerable.Repeat(5, 112).ToList(), new GenerationOptions { MaxNewTokens = 16, EosTokenIds = [] }).Should().HaveCount(16, "112 + 16 fits exactly");
    }

    [Fact]
    public void The_trainer_refuses_an_example_with_an_id_outside_the_vocabulary_naming_the_example()
    {
        using var scope = NewDisposeScope();
        var peft = PeftModel.GetPeftModel(CausalLm.FromPretrained(Fixtures.Model("llama")), new LoraConfig { R = 2, LoraAlpha = 4 });
        using var trainer = new Trainer(peft, new TrainingOptions { MaxSteps = 1 });
        var data = new List<TrainingExample> { new([1, 2, 3], [4, 5]), new([1, 2], [4, 1000, 5]) };

        var act = () => trainer.Train(data);

        NoNativeTrace(act.Should().Throw<ArgumentOutOfRangeException>()
            .WithMessage("Training example 1 has token id 1000 at position 1 of its completion, outside the model's vocabulary (0 to 999, vocab_size in config.json)*").Which);
        trainer.GlobalStep.Should().Be(0);
    }

    public sealed class IdsRow
    {
        [VectorType] public int[] PromptIds { get; set; } = [];
        public string Completion { get; set; } = "";
    }

    [Fact]
    public void MLNet_token_columns_with_an_id_past_the_vocabulary_name_the_row_and_column_in_Fit_and_Transform()
    {
        var ml = new MLContext(seed: 1);
        string folder = TinyBaseModel.Create(_temp.File("tiny"), "llama", hiddenSize: 32, layers: 1, heads: 4, seed: 3);
        var options = new LoraCausalLmOptions
        {
            BaseModelFolder = folder, PromptTokensColumnName = "PromptIds", Seed = 1,
            Training = { MaxSteps = 1 }, Generation = { MaxNewTokens = 2 },
        };
        IdsRow[] rows = [new() { PromptIds = [65, 66], Completion = "a" }, new() { PromptIds = [67], Completion = "b" }, new() { PromptIds = [68, TinyBaseModel.VocabSize], Completion = "c" }];

        var fit = () => ml.Lora().CausalLm(options).Fit(ml.Data.LoadFromEnumerable(rows));
        var e = fit.Should().Throw<DataRowException>()
            .WithMessage($"Row 2 (counting from 0), column 'PromptIds': Token id {TinyBaseModel.VocabSize} is outside the vocabulary of the base model (0 to {TinyBaseModel.VocabSize - 1}, vocab_size in its config.json)*").Which;
        e.Row.Should().Be(2);
        e.ColumnName.Should().Be("PromptIds");

        using var model = ml.Lora().CausalLm(options).Fit(ml.Data.LoadFromEnumerable(rows[..2]));
        var read = () => model.Transform(ml.Data.LoadFromEnumerable(rows)).GetColumn<string>("GeneratedText").ToList();
        read.Should().Throw<DataRowException>().WithMessage($"Row 2 (counting from 0), column 'PromptIds': Token id {TinyBaseModel.VocabSize} is outside*");
    }

    [Fact]
    public void A_tokenizer_larger_than_the_model_is_refused_before_any_row_naming_both_files()
    {
        var ml = new MLContext(seed: 1);
        string folder = TinyBaseModel.Create(_temp.File("tiny"), "bloom", hiddenSize: 32, layers: 1, heads: 4, seed: 3);
        File.Copy(Path.Combine(Fixtures.Tokenizer("gpt2"), "tokenizer.json"), Path.Combine(folder, "tokenizer.json"), overwrite: true);
        var rows = new[] { new Row { Prompt = "!", Completion = "\"" }, new Row { Prompt = "hello", Completion = "world" } };

        var fit = () => ml.Lora().CausalLm(new LoraCausalLmOptions { BaseModelFolder = folder, Seed = 1, Training = { MaxSteps = 1 } })
            .Fit(ml.Data.LoadFromEnumerable(rows));

        // Refused when the tokenizer is opened, before the weights and the rows (TokenizerVocabularyCheck).
        NoNativeTrace(fit.Should().Throw<InvalidDataException>()
            .WithMessage($"The tokenizer in '{Path.Combine(folder, "tokenizer.json")}' has 50257 token ids*'{Path.Combine(folder, "config.json")}' has vocab_size 257*").Which);
    }
}
