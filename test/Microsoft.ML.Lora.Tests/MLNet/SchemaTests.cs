using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.Tests.MLNet;

public sealed class SchemaTests : MLNetTestBase
{
    public sealed class NumericPrompt
    {
        public float Prompt { get; set; }
        public string Completion { get; set; } = "";
    }

    // SchemaShape.Create is internal to ML.NET; estimators in a pipeline get their SchemaShape from it.
    private static SchemaShape ShapeOf(DataViewSchema schema) =>
        (SchemaShape)typeof(SchemaShape).GetMethod("Create", System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Public)!
            .Invoke(null, new object[] { schema })!;

    [Fact]
    public void GetOutputSchema_adds_the_output_text_column()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(2));

        var shape = Trainer(ml).GetOutputSchema(ShapeOf(data.Schema));

        var output = shape.Single(c => c.Name == "GeneratedText");
        output.ItemType.Should().Be(TextDataViewType.Instance);
        output.Kind.Should().Be(SchemaShape.Column.VectorKind.Scalar);
        shape.Select(c => c.Name).Should().Contain(new[] { "Prompt", "Completion", "Score" });
    }

    [Fact]
    public void A_missing_column_is_named()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new Question { Prompt = "p" } });

        var act = () => Trainer(ml).GetOutputSchema(ShapeOf(data.Schema));
        act.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*completion column 'Completion'*String*");

        var fit = () => Trainer(ml).Fit(data);
        fit.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*completion column 'Completion'*");
    }

    [Fact]
    public void A_column_of_the_wrong_type_is_named_with_the_expected_type()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(new[] { new NumericPrompt { Prompt = 1, Completion = "c" } });

        var act = () => Trainer(ml).GetOutputSchema(ShapeOf(data.Schema));
        act.Should().Throw<ArgumentOutOfRangeException>()
            .WithMessage("Schema mismatch for prompt column 'Prompt': expected String, got Single*");
    }

    [Fact]
    public void The_transformer_checks_its_input_too()
    {
        var ml = new MLContext(seed: 1);
        using var model = Trainer(ml).Fit(ml.Data.LoadFromEnumerable(Rows(2)));
        var wrong = ml.Data.LoadFromEnumerable(new[] { new NumericPrompt { Prompt = 1 } });

        var transform = () => model.Transform(wrong);
        transform.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*prompt column 'Prompt'*expected String*");
        var engine = () => ml.Model.CreatePredictionEngine<NumericPrompt, Answer>(model);
        engine.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*prompt column 'Prompt'*");
    }

    [Fact]
    public void Options_are_validated()
    {
        var ml = new MLContext(seed: 1);
        var act = () => ml.Lora().CausalLm(new LoraCausalLmOptions());
        act.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*BaseModelFolder*");
    }
}
