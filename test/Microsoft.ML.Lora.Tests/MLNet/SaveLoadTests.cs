using Microsoft.ML.Data;
using System.IO.Compression;

namespace Microsoft.ML.Lora.Tests.MLNet;

public sealed class SaveLoadTests : MLNetTestBase
{
    private (string Zip, List<string> Expected, IDataView Data) TrainAndSave(int rows = 6)
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(rows));
        using var model = Trainer(ml, seed: 11).Fit(data);
        var expected = Column(model.Transform(data), "GeneratedText");
        string zip = Path.Combine(Root, "model.zip");
        ml.Model.Save(model, data.Schema, zip);
        return (zip, expected, data);
    }

    [Fact]
    public void Load_in_a_new_MLContext_gives_identical_output()
    {
        var (zip, expected, _) = TrainAndSave();

        var ml = new MLContext(seed: 2);
        var loaded = ml.Model.Load(zip, out var schema);
        var data = ml.Data.LoadFromEnumerable(Rows(6));

        loaded.Should().BeOfType<LoraCausalLmTransformer>();
        schema.Select(c => c.Name).Should().Contain("Prompt");
        Column(loaded.Transform(data), "GeneratedText").Should().Equal(expected);
        using var engine = ml.Model.CreatePredictionEngine<Question, Answer>(loaded);
        engine.Predict(new Question { Prompt = "question 0" }).GeneratedText.Should().Be(expected[0]);
        ((IDisposable)loaded).Dispose();
    }

    [Fact]
    public void The_zip_holds_the_adapter_byte_for_byte_and_no_base_weights()
    {
        var (zip, _, _) = TrainAndSave();

        using var archive = ZipFile.OpenRead(zip);
        var names = archive.Entries.Select(e => e.FullName.Replace('\\', '/')).ToList();
        names.Should().Contain(n => n.EndsWith("Adapter/adapter_config.json"));
        names.Should().Contain(n => n.EndsWith("Options.json"));
        names.Should().Contain(n => n.EndsWith("BaseModel.json"));
        names.Should().NotContain(n => n.EndsWith("model.safetensors") && !n.EndsWith("adapter_model.safetensors"));

        var weights = archive.Entries.Single(e => e.FullName.Replace('\\', '/').EndsWith("Adapter/adapter_model.safetensors"));
        using var stream = weights.Open();
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        copy.ToArray().Should().Equal(FakeTextGeneratorFactory.AdapterWeights(11));

        string baseModel = new StreamReader(archive.Entries.Single(e => e.FullName.EndsWith("BaseModel.json")).Open()).ReadToEnd();
        baseModel.Should().Contain("sha256:").And.Contain("base-model");
        archive.Entries.Sum(e => e.Length).Should().BeLessThan(FakeTextGeneratorFactory.AdapterBytes + 64 * 1024);
    }

    [Fact]
    public void A_saved_pipeline_loads_as_a_chain()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows(3));
        var model = ml.Transforms.CopyColumns("Question", "Prompt")
            .Append(ml.Lora().CausalLm(new LoraCausalLmOptions { BaseModelFolder = BaseFolder, PromptColumnName = "Question" },
                new FakeTextGeneratorFactory()))
            .Fit(data);
        var expected = Column(model.Transform(data), "GeneratedText");
        string zip = Path.Combine(Root, "chain.zip");
        ml.Model.Save(model, data.Schema, zip);
        model.LastTransformer.Dispose();

        var loaded = new MLContext(seed: 3).Model.Load(zip, out _);
        Column(loaded.Transform(data), "GeneratedText").Should().Equal(expected);
    }

    [Fact]
    public void Load_fails_naming_the_base_model_folder_when_it_is_gone()
    {
        var (zip, _, _) = TrainAndSave();
        Directory.Delete(BaseFolder, recursive: true);

        var act = () => new MLContext(seed: 2).Model.Load(zip, out _);

        act.Should().Throw<Exception>().Where(e => AllMessages(e).Contains(BaseFolder) && AllMessages(e).Contains("does not exist"));
    }

    [Fact]
    public void Load_fails_when_the_base_model_changed()
    {
        var (zip, _, _) = TrainAndSave();
        File.WriteAllText(Path.Combine(BaseFolder, "config.json"), "{\"model_type\":\"other\"}");

        var act = () => new MLContext(seed: 2).Model.Load(zip, out _);

        act.Should().Throw<Exception>().Where(e => AllMessages(e).Contains(BaseFolder) && AllMessages(e).Contains("differs"));
    }

    [Fact]
    public void Load_fails_when_the_tokenizer_changed()
    {
        var (zip, _, _) = TrainAndSave();
        var tokenizer = Path.Combine(BaseFolder, "tokenizer.json");
        File.WriteAllText(tokenizer, File.Exists(tokenizer) ? File.ReadAllText(tokenizer) + " " : "{}");

        var act = () => new MLContext(seed: 2).Model.Load(zip, out _);

        act.Should().Throw<Exception>().Where(e => AllMessages(e).Contains(BaseFolder) && AllMessages(e).Contains("tokenizer files"));
    }

    private static string AllMessages(Exception e) => e.InnerException == null ? e.Message : e.Message + " | " + AllMessages(e.InnerException);
}
