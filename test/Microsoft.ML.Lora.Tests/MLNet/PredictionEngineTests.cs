using Microsoft.ML.Data;
namespace Microsoft.ML.Lora.Tests.MLNet;

public sealed class PredictionEngineTests : MLNetTestBase
{
    [Fact]
    public void PredictionEngine_gives_the_same_text_as_Transform()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(5));
        using var model = Trainer(ml).Fit(data);
        var transformed = Column(model.Transform(data), "GeneratedText");

        using var engine = ml.Model.CreatePredictionEngine<Question, Answer>(model);
        var predicted = Rows(5).Select(r => engine.Predict(new Question { Prompt = r.Prompt }).GeneratedText).ToList();

        predicted.Should().Equal(transformed);
    }

    [Fact]
    public void Disposing_one_engine_or_the_transformer_does_not_free_weights_another_engine_uses()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(3));
        var model = Trainer(ml).Fit(data);
        var fake = FakeOf(model);

        var first = ml.Model.CreatePredictionEngine<Question, Answer>(model);
        var second = ml.Model.CreatePredictionEngine<Question, Answer>(model);
        first.Predict(new Question { Prompt = "abc" }).GeneratedText.Should().Be("cba|n3-r8");

        first.Dispose();
        second.Predict(new Question { Prompt = "xyz" }).GeneratedText.Should().Be("zyx|n3-r8");

        model.Dispose();
        fake.Disposed.Should().BeFalse("an engine still uses the model");
        second.Predict(new Question { Prompt = "123" }).GeneratedText.Should().Be("321|n3-r8");

        second.Dispose();
        fake.Disposed.Should().BeTrue("the last user is gone");
    }
}
