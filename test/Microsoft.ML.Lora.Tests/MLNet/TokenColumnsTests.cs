using Microsoft.ML.Data;
using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.Tests.MLNet;

public sealed class QuoteRow
{
    public string Quote { get; set; } = "";
    public string Author { get; set; } = "";
    public string Tags { get; set; } = "";
    public float Score { get; set; }
}

public sealed class QuoteText
{
    public string Quote { get; set; } = "";
}

public sealed class QuoteIds
{
    [VectorType]
    public int[] Ids { get; set; } = [];
}

/// <summary>ConcatenateText, Tokenize and CausalLm on token id columns, with the fake backend and fixture tokenizers.</summary>
public sealed class TokenColumnsTests : MLNetTestBase
{
    private static QuoteRow[] Quotes() =>
    [
        new() { Quote = "Be yourself.", Author = "Wilde", Tags = "honesty", Score = 1 },
        new() { Quote = "", Author = "nobody", Tags = "empty", Score = 2 },
        new() { Quote = "So many books", Author = null!, Tags = "books", Score = 3 },
    ];

    /// <summary>A base model folder with the llama2 fixture tokenizer (adds BOS) and a placeholder config.json.</summary>
    private string LlamaTokenizerFolder()
    {
        string folder = Path.Combine(Root, "llama2");
        Directory.CreateDirectory(folder);
        foreach (var file in new[] { "tokenizer.json", "tokenizer_config.json" })
            File.Copy(Path.Combine(Fixtures.Tokenizer("llama2"), file), Path.Combine(folder, file));
        File.WriteAllText(Path.Combine(folder, "config.json"), "{\"model_type\":\"llama\"}");
        return folder;
    }

    [Fact]
    public void ConcatenateText_joins_with_the_separator_and_survives_save_and_load()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Quotes());
        var model = ml.Transforms.Text.ConcatenateText("Prompt", " ->: ", "Quote", "Author").Fit(data);

        string[] expected = ["Be yourself. ->: Wilde", " ->: nobody", "So many books ->: "];
        Column(model.Transform(data), "Prompt").Should().Equal(expected);

        string zip = Path.Combine(Root, "concat.zip");
        ml.Model.Save(model, data.Schema, zip);
        var ml2 = new MLContext(seed: 2);
        var loaded = ml2.Model.Load(zip, out _);
        Column(loaded.Transform(ml2.Data.LoadFromEnumerable(Quotes())), "Prompt").Should().Equal(expected);
    }

    [Fact]
    public void ConcatenateText_handles_three_columns_one_column_and_separators_that_need_escaping()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Quotes());
        Column(ml.Transforms.Text.ConcatenateText("J", "\"\\\n|", "Quote", "Author", "Tags").Fit(data).Transform(data), "J")
            .Should().Equal("Be yourself.\"\\\n|Wilde\"\\\n|honesty", "\"\\\n|nobody\"\\\n|empty", "So many books\"\\\n|\"\\\n|books");
        Column(ml.Transforms.Text.ConcatenateText("J", "", "Quote", "Tags").Fit(data).Transform(data), "J")
            .Should().Equal("Be yourself.honesty", "empty", "So many booksbooks");
        Column(ml.Transforms.Text.ConcatenateText("J", "-", "Tags").Fit(data).Transform(data), "J")
            .Should().Equal("honesty", "empty", "books");
    }

    [Fact]
    public void ConcatenateText_with_a_prefix_and_suffix_builds_a_prompt_template_and_survives_save_and_load()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Quotes());
        // The QuoteTagger prompt: quote + " ->: ", the same text as Expression("q => concat(q, \" ->: \")").
        var prompt = ml.Transforms.Text.ConcatenateText("Prompt", ["Quote"], suffix: " ->: ").Fit(data);
        string[] expected = ["Be yourself. ->: ", " ->: ", "So many books ->: "];
        Column(prompt.Transform(data), "Prompt").Should().Equal(expected);
        Column(ml.Transforms.Expression("Prompt", "q => concat(q, \" ->: \")", "Quote").Fit(data).Transform(data), "Prompt")
            .Should().Equal(expected);

        string zip = Path.Combine(Root, "template.zip");
        ml.Model.Save(prompt, data.Schema, zip);
        var ml2 = new MLContext(seed: 2);
        Column(ml2.Model.Load(zip, out _).Transform(ml2.Data.LoadFromEnumerable(Quotes())), "Prompt").Should().Equal(expected);

        Column(ml.Transforms.Text.ConcatenateText("J", ["Quote", "Author"], separator: " | ", prefix: "Q: \"", suffix: "\"\nA:").Fit(data).Transform(data), "J")
            .Should().Equal("Q: \"Be yourself. | Wilde\"\nA:", "Q: \" | nobody\"\nA:", "Q: \"So many books | \"\nA:");
        Column(ml.Transforms.Text.ConcatenateText("J", ["Quote", "Tags"]).Fit(data).Transform(data), "J")
            .Should().Equal("Be yourself.honesty", "empty", "So many booksbooks");
        var nullSuffix = () => ml.Transforms.Text.ConcatenateText("J", ["Quote"], suffix: null!);
        nullSuffix.Should().Throw<ArgumentNullException>();
        var none = () => ml.Transforms.Text.ConcatenateText("J", [], suffix: " ->: ");
        none.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*1 to 5*");
    }

    [Fact]
    public void ConcatenateText_names_a_column_of_the_wrong_type_or_a_missing_one()
    {
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Quotes());

        var wrong = () => ml.Transforms.Text.ConcatenateText("J", " ", "Quote", "Score").Fit(data);
        wrong.Should().Throw<ArgumentOutOfRangeException>().WithMessage("Schema mismatch for input column 'Score': expected String, got Single*");
        var shape = () => ml.Transforms.Text.ConcatenateText("J", " ", "Quote", "Score").GetOutputSchema(SchemaShapeOf(data.Schema));
        shape.Should().Throw<ArgumentOutOfRangeException>().WithMessage("Schema mismatch for input column 'Score': expected String, got Single*");
        var missing = () => ml.Transforms.Text.ConcatenateText("J", " ", "Quote", "Nope").Fit(data);
        missing.Should().Throw<ArgumentOutOfRangeException>().WithMessage("Could not find input column 'Nope'. The input column must be of type String*");
        var tooMany = () => ml.Transforms.Text.ConcatenateText("J", " ", "a", "b", "c", "d", "e", "f");
        tooMany.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*1 to 5*");
    }

    [Fact]
    public void Tokenize_gives_the_tokenizer_ids_and_survives_save_and_load()
    {
        string folder = LlamaTokenizerFolder();
        var tokenizer = HfTokenizer.Load(Fixtures.Tokenizer("llama2"));
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Quotes());
        var model = ml.Lora().Tokenize(folder, "Ids", "Quote")
            .Append(ml.Lora().Tokenize(folder, "TagIds", "Tags", addSpecialTokens: false))
            .Fit(data);
        var output = model.Transform(data);
        output.Schema["Ids"].Type.Should().Be(new VectorDataViewType(NumberDataViewType.Int32));

        var ids = output.GetColumn<int[]>("Ids").ToList();
        var tagIds = output.GetColumn<int[]>("TagIds").ToList();
        for (int i = 0; i < Quotes().Length; i++)
        {
            ids[i].Should().Equal(tokenizer.Encode(Quotes()[i].Quote, addSpecialTokens: true), $"row {i}");
            tagIds[i].Should().Equal(tokenizer.Encode(Quotes()[i].Tags, addSpecialTokens: false), $"row {i}");
        }
        ids[0][0].Should().Be(1, "llama2 adds BOS");
        tagIds[0].Should().NotContain(1);
        // Exact ids from the fixture (made with Hugging Face tokenizers).
        ml.Lora().Tokenize(folder, "Ids", "Quote").Fit(data)
            .Transform(ml.Data.LoadFromEnumerable(new[] { new QuoteText { Quote = "Be yourself; everyone else is already taken." } }))
            .GetColumn<int[]>("Ids").Single().Should().Equal(1, 1739, 3936, 28745, 3376, 1112, 349, 2141, 3214, 28723);

        string zip = Path.Combine(Root, "tokenize.zip");
        ml.Model.Save(model, data.Schema, zip);
        var ml2 = new MLContext(seed: 2);
        var loaded = ml2.Model.Load(zip, out _);
        var reloaded = loaded.Transform(ml2.Data.LoadFromEnumerable(Quotes()));
        reloaded.GetColumn<int[]>("Ids").ToList().Should().BeEquivalentTo(ids, o => o.WithStrictOrdering());
        reloaded.GetColumn<int[]>("TagIds").ToList().Should().BeEquivalentTo(tagIds, o => o.WithStrictOrdering());

        using var engine = ml2.Model.CreatePredictionEngine<QuoteRow, QuoteIds>(loaded);
        engine.Predict(Quotes()[0]).Ids.Should().Equal(ids[0]);
    }

    [Fact]
    public void Tokenize_names_a_column_of_the_wrong_type()
    {
        string folder = LlamaTokenizerFolder();
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Quotes());

        var fit = () => ml.Lora().Tokenize(folder, "Ids", "Score").Fit(data);
        fit.Should().Throw<ArgumentOutOfRangeException>().WithMessage("Schema mismatch for input column 'Score': expected String, got Single*");
        var shape = () => ml.Lora().Tokenize(folder, "Ids", "Nope").Append(ml.Lora().CausalLm(BaseFolder)).GetOutputSchema(SchemaShapeOf(data.Schema));
        shape.Should().Throw<ArgumentOutOfRangeException>().WithMessage("Could not find input column 'Nope'*");

        // Without its text column the fitted transformer adds nothing (a completion is not needed to score rows).
        var model = ml.Lora().Tokenize(folder, "Ids", "Quote").Fit(data);
        var other = ml.Data.LoadFromEnumerable(new[] { new Row() });
        model.Transform(other).Schema.Select(c => c.Name).Should().Equal(other.Schema.Select(c => c.Name));
    }

    private LoraCausalLmOptions TokenOptions() => new()
    {
        BaseModelFolder = BaseFolder,
        PromptTokensColumnName = "PromptIds",
        CompletionTokensColumnName = "CompletionIds",
        Seed = 7,
        Generation = new LoraGenerationOptions { BatchSize = 2 },
    };

    [Fact]
    public void CausalLm_trains_and_generates_from_token_columns()
    {
        string folder = LlamaTokenizerFolder();
        var tokenizer = HfTokenizer.Load(Fixtures.Tokenizer("llama2"));
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Quotes());
        var options = TokenOptions();
        options.PromptColumnName.Should().BeNull();
        options.CompletionColumnName.Should().BeNull();

        var pipeline = ml.Transforms.Text.ConcatenateText("Prompt", " ->: ", "Quote", "Author")
            .Append(ml.Lora().Tokenize(folder, "PromptIds", "Prompt"))
            .Append(ml.Lora().Tokenize(folder, "CompletionIds", "Tags", addSpecialTokens: false))
            .Append(ml.Lora().CausalLm(options, new FakeTextGeneratorFactory()));
        var model = pipeline.Fit(data);

        var generated = Column(model.Transform(data), "GeneratedText");
        string[] prompts = ["Be yourself. ->: Wilde", " ->: nobody", "So many books ->: "];
        generated.Should().Equal(prompts.Select(p => "ids:" + string.Join(",", tokenizer.Encode(p, true).Reverse()) + "|n3-r8"));
        FakeOf(model.LastTransformer).BatchSizes.Should().Equal(2, 1);
        model.LastTransformer.PromptTokensColumnName.Should().Be("PromptIds");
        model.LastTransformer.PromptColumnName.Should().BeNull();

        string zip = Path.Combine(Root, "tokens.zip");
        ml.Model.Save(model, data.Schema, zip);
        model.LastTransformer.Dispose();
        var loaded = new MLContext(seed: 3).Model.Load(zip, out _);
        Column(loaded.Transform(data), "GeneratedText").Should().Equal(generated);
    }

    [Fact]
    public void CausalLm_wants_exactly_one_prompt_column_and_names_token_columns_of_the_wrong_type()
    {
        var ml = new MLContext(seed: 1);
        var both = TokenOptions();
        both.PromptColumnName = "Prompt";
        var act = () => ml.Lora().CausalLm(both);
        act.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*PromptColumnName or PromptTokensColumnName: exactly one*");
        var neither = new LoraCausalLmOptions { BaseModelFolder = BaseFolder, CompletionColumnName = "" };
        act = () => ml.Lora().CausalLm(neither);
        act.Should().Throw<ArgumentOutOfRangeException>().WithMessage("*CompletionColumnName or CompletionTokensColumnName: exactly one*");

        // Token columns that hold text.
        var data = ml.Data.LoadFromEnumerable(new[] { new Row { Prompt = "p", Completion = "c" } });
        var options = TokenOptions();
        options.PromptTokensColumnName = "Prompt";
        options.CompletionTokensColumnName = "Completion";
        var trainer = ml.Lora().CausalLm(options, new FakeTextGeneratorFactory());
        var fit = () => trainer.Fit(data);
        fit.Should().Throw<ArgumentOutOfRangeException>().WithMessage("Schema mismatch for prompt tokens column 'Prompt': expected Vector<Int32>, got String*");
        var shape = () => trainer.GetOutputSchema(SchemaShapeOf(data.Schema));
        shape.Should().Throw<ArgumentOutOfRangeException>().WithMessage("Schema mismatch for prompt tokens column 'Prompt': expected Vector<Int32>, got String*");
    }

    private static SchemaShape SchemaShapeOf(DataViewSchema schema) =>
        (SchemaShape)typeof(SchemaShape).GetMethod("Create", System.Reflection.BindingFlags.Static | System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Public)!
            .Invoke(null, new object[] { schema })!;
}
