using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>
/// The ownership rule of docs/mlnet.md ("Disposal"): the transformer owns the weights and its Dispose frees them
/// (once; ML.NET's PredictionEngine and TransformerChain call it too), an open cursor defers it, engines borrow without
/// keeping the weights alive and throw ObjectDisposedException afterwards.
/// </summary>
public sealed class DisposalTests : MLNetTestBase
{
    private static readonly PredictionEngineOptions Borrowing = new() { OwnsTransformer = false };

    [Fact]
    public void Dispose_twice_is_harmless_and_a_borrowing_engine_then_throws_ObjectDisposedException()
    {
        var ml = new MLContext(seed: 1);
        var model = Trainer(ml).Fit(ml.Data.LoadFromEnumerable(Rows(3)));
        var fake = FakeOf(model);
        var engine = ml.Model.CreatePredictionEngine<Question, Answer>(model, Borrowing);
        engine.Predict(new Question { Prompt = "abc" }).GeneratedText.Should().Be("cba|n3-r8");

        model.Dispose();
        model.Dispose();

        fake.Disposed.Should().BeTrue("the transformer owns the weights");
        var predict = () => engine.Predict(new Question { Prompt = "abc" });
        predict.Should().Throw<ObjectDisposedException>().WithMessage("*LoraCausalLmTransformer was disposed*OwnsTransformer = false*");
        engine.Dispose();
        engine.Dispose();
    }

    [Fact]
    public void A_default_engine_disposes_the_model_as_ML_NET_defines_and_engines_leave_no_reference()
    {
        var ml = new MLContext(seed: 1);
        var model = Trainer(ml).Fit(ml.Data.LoadFromEnumerable(Rows(3)));
        var fake = FakeOf(model);
        for (int i = 0; i < 3; i++)
        {
            using var borrowing = ml.Model.CreatePredictionEngine<Question, Answer>(model, Borrowing);
            borrowing.Predict(new Question { Prompt = "x" + i });
        }
        model.Generator.References.Should().Be(1, "only the transformer's own reference: engines do not count");
        fake.Disposed.Should().BeFalse();

        var owning = ml.Model.CreatePredictionEngine<Question, Answer>(model); // OwnsTransformer = true, ML.NET's default
        owning.Predict(new Question { Prompt = "ab" }).GeneratedText.Should().Be("ba|n3-r8");
        owning.Dispose();
        fake.Disposed.Should().BeTrue("PredictionEngine.Dispose disposed the transformer");
        model.Dispose();
        var another = () => ml.Model.CreatePredictionEngine<Question, Answer>(model);
        another.Should().Throw<ObjectDisposedException>().WithMessage("*LoraCausalLmTransformer was disposed*");
    }

    [Fact]
    public void An_open_cursor_defers_the_free_until_it_is_disposed()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(5));
        var model = Trainer(ml, batchSize: 2).Fit(data);
        var fake = FakeOf(model);
        var scored = model.Transform(data);
        var cursor = scored.GetRowCursor(scored.Schema);
        var generated = cursor.GetGetter<ReadOnlyMemory<char>>(scored.Schema["GeneratedText"]);
        var text = default(ReadOnlyMemory<char>);
        cursor.MoveNext().Should().BeTrue();

        model.Dispose();
        fake.Disposed.Should().BeFalse("a cursor is reading");
        int rows = 0;
        do { generated(ref text); rows++; } while (cursor.MoveNext());
        rows.Should().Be(5);
        cursor.Dispose();
        fake.Disposed.Should().BeTrue("the transformer is disposed and the last cursor closed");

        var read = () => scored.GetColumn<string>("GeneratedText").ToList();
        read.Should().Throw<ObjectDisposedException>().WithMessage("*LoraCausalLmTransformer was disposed*");
        scored.GetColumn<string>("Prompt").Should().HaveCount(5, "columns that need no generation are still read");
        var reset = () => model.ResetSampling(3);
        reset.Should().Throw<ObjectDisposedException>().WithMessage("*LoraCausalLmTransformer was disposed*");
    }

    [Fact]
    public void A_model_disposed_by_its_engine_can_still_be_saved_from_the_adapter_kept_at_Dispose()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(3));
        var model = Trainer(ml).Fit(data);
        using (var engine = ml.Model.CreatePredictionEngine<Question, Answer>(model))
            engine.Predict(new Question { Prompt = "ab" });
        FakeOf(model).Disposed.Should().BeTrue();

        string zip = Path.Combine(Root, "model.zip");
        ml.Model.Save(model, data.Schema, zip); // the fake's Load checks the adapter bytes
        var loaded = (LoraCausalLmTransformer)ml.Model.Load(zip, out _);
        using (loaded)
            loaded.Transform(ml.Data.LoadFromEnumerable(Rows(1))).GetColumn<string>("GeneratedText").Should().Equal("0 noitseuq|n3-r8");
    }

    [Fact]
    public void An_engine_over_a_loaded_chain_frees_the_model_at_its_Dispose_and_the_chains_Dispose_is_harmless()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(2));
        string zip = Path.Combine(Root, "model.zip");
        using (var chain = ml.Transforms.CopyColumns("Copy", "Prompt").Append(Trainer(ml)).Fit(data))
            ml.Model.Save(chain, data.Schema, zip);

        var loaded = ml.Model.Load(zip, out _);
        var fake = FakeOf(((IEnumerable<ITransformer>)loaded).OfType<LoraCausalLmTransformer>().Single());
        using (var engine = ml.Model.CreatePredictionEngine<Question, Answer>(loaded))
            engine.Predict(new Question { Prompt = "ab" }).GeneratedText.Should().Be("ba|n2-r8");
        fake.Disposed.Should().BeTrue("the issue's leak: the engine's Dispose reached the model once and freed it");
        ((IDisposable)loaded).Dispose();
    }
}
