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
}
