using Microsoft.ML.Data;
namespace Microsoft.ML.Lora.Tests.MLNet;

public sealed class TransformTests : MLNetTestBase
{
    [Fact]
    public void Fit_then_Transform_adds_a_generated_text_for_every_row()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(10));
        using var model = Trainer(ml).Fit(data);

        var output = model.Transform(data);

        output.Schema["GeneratedText"].Type.Should().Be(Microsoft.ML.Data.TextDataViewType.Instance);
        var generated = Column(output, "GeneratedText");
        generated.Should().Equal(Rows(10).Select(r => FakeTextGenerator.Complete(r.Prompt, "n10-r8")));
        output.GetColumn<float>("Score").Should().Equal(Rows(10).Select(r => r.Score));
        Column(output, "Completion").Should().Equal(Rows(10).Select(r => r.Completion));
    }

    [Fact]
    public void Training_progress_goes_to_the_MLContext_log()
    {
        var ml = new MLContext(seed: 1);
        var messages = new List<string>();
        ml.Log += (_, e) => { lock (messages) messages.Add(e.Message); };

        using var model = Trainer(ml).Fit(ml.Data.LoadFromEnumerable(Rows(2)));

        lock (messages)
            messages.Should().Contain(m => m.Contains("fake training on 2 examples"));
    }

    [Fact]
    public void Transform_is_lazy_and_generates_in_batches()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(10));
        using var model = Trainer(ml, batchSize: 3).Fit(data);
        var fake = FakeOf(model);

        var output = model.Transform(data);
        fake.BatchSizes.Should().BeEmpty("nothing is generated before the column is read");

        output.GetColumn<float>("Score").Should().HaveCount(10);
        fake.BatchSizes.Should().BeEmpty("reading other columns generates nothing");

        Column(output, "GeneratedText").Should().HaveCount(10);
        fake.BatchSizes.Should().Equal(3, 3, 3, 1);
    }

    [Fact]
    public void Rows_skipped_by_the_reader_are_not_generated_one_by_one()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(7));
        using var model = Trainer(ml, batchSize: 2).Fit(data);
        var fake = FakeOf(model);
        var output = model.Transform(data);

        using var cursor = output.GetRowCursor(output.Schema);
        var getter = cursor.GetGetter<ReadOnlyMemory<char>>(output.Schema["GeneratedText"]);
        var seen = new List<string>();
        ReadOnlyMemory<char> value = default;
        while (cursor.MoveNext())
        {
            if (cursor.Position % 3 != 0) continue; // rows 0, 3, 6
            getter(ref value);
            seen.Add(value.ToString());
        }

        seen.Should().Equal(new[] { 0, 3, 6 }.Select(i => FakeTextGenerator.Complete($"question {i}", "n7-r8")));
        fake.BatchSizes.Should().Equal(2, 2, 1);
    }

    [Fact]
    public void Works_after_other_estimators_in_a_pipeline()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(4));
        var pipeline = ml.Transforms.CopyColumns("Question", "Prompt")
            .Append(ml.Lora().CausalLm(new LoraCausalLmOptions { BaseModelFolder = BaseFolder, PromptColumnName = "Question" },
                new FakeTextGeneratorFactory()));

        var model = pipeline.Fit(data);

        Column(model.Transform(data), "GeneratedText")
            .Should().Equal(Rows(4).Select(r => FakeTextGenerator.Complete(r.Prompt, "n4-r8")));
        using (var engine = ml.Model.CreatePredictionEngine<Question, Answer>(model))
            engine.Predict(new Question { Prompt = "abc" }).GeneratedText.Should().Be("cba|n4-r8");
        model.LastTransformer.Dispose();
    }
}

public sealed class PromptJoinTests : MLNetTestBase
{
    public sealed class QA
    {
        public string Context { get; set; } = "";
        public string Question { get; set; } = "";
        public string Completion { get; set; } = "";
    }

    [Fact]
    public void An_Expression_transform_joins_text_columns_into_the_prompt_and_the_pipeline_saves_and_loads()
    {
        var ml = new MLContext(seed: 1);
        var rows = new[] { new QA { Context = "sky", Question = "color?", Completion = "blue" }, new QA { Context = "grass", Question = "color?", Completion = "green" } };
        var data = ml.Data.LoadFromEnumerable(rows);
        var pipeline = ml.Transforms.Expression("Prompt", "(c, q) => concat(c, \" \", q, \" ->: \")", "Context", "Question")
            .Append(ml.Lora().CausalLm(new LoraCausalLmOptions { BaseModelFolder = BaseFolder }, new FakeTextGeneratorFactory()));

        var model = pipeline.Fit(data);
        var output = model.Transform(data);

        Column(output, "Prompt").Should().Equal("sky color? ->: ", "grass color? ->: ");
        var generated = Column(output, "GeneratedText");
        generated.Should().Equal(FakeTextGenerator.Complete("sky color? ->: ", "n2-r8"), FakeTextGenerator.Complete("grass color? ->: ", "n2-r8"));

        string zip = Path.Combine(Root, "joined.zip");
        ml.Model.Save(model, data.Schema, zip);
        model.Dispose();
        var loaded = new MLContext(seed: 2).Model.Load(zip, out _);
        Column(loaded.Transform(data), "GeneratedText").Should().Equal(generated);
        ((IDisposable)loaded).Dispose();
    }
}
