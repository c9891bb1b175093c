using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora.Tests.Checkpoints;

public sealed class ModelConfigTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static ModelConfig LoadFixture(string arch) => ModelConfig.Load(Path.Combine(Fixtures.Model(arch), "config.json"));

    [Fact]
    public void Bloom_fixture()
    {
        var c = LoadFixture("bloom");
        c.ModelType.Should().Be("bloom");
        (c.VocabSize, c.HiddenSize, c.NumLayers, c.NumHeads, c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize)
            .Should().Be((1000, 64, 2, 4, 4, 16, 256));
        c.MaxPositionEmbeddings.Should().Be(0);
        c.NormEpsilon.Should().Be(1e-5);
        c.RopeTheta.Should().Be(10000);
        c.HiddenAct.Should().Be("gelu_pytorch_tanh");
        c.TieWordEmbeddings.Should().BeTrue();
        (c.BosTokenId, c.EosTokenId, c.PadTokenId).Should().Be((1, 2, 0));
        (c.AttentionBias, c.MlpBias, c.SlidingWindow, c.RopeScaling).Should().Be((false, false, (int?)null, (JsonObject?)null));
    }

    [Fact]
    public void Gpt2_fixture()
    {
        var c = LoadFixture("gpt2");
        c.ModelType.Should().Be("gpt2");
        (c.VocabSize, c.HiddenSize, c.NumLayers, c.NumHeads, c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize)
            .Should().Be((1000, 64, 2, 4, 4, 16, 256));
        c.MaxPositionEmbeddings.Should().Be(128);
        c.NormEpsilon.Should().Be(1e-5);
        c.HiddenAct.Should().Be("gelu_new");
        c.TieWordEmbeddings.Should().BeTrue();
        (c.BosTokenId, c.EosTokenId, c.PadTokenId).Should().Be((1, 2, 0));
    }

    [Fact]
    public void Llama_fixture()
    {
        var c = LoadFixture("llama");
        c.ModelType.Should().Be("llama");
        (c.VocabSize, c.HiddenSize, c.NumLayers, c.NumHeads, c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize)
            .Should().Be((1000, 64, 2, 4, 2, 16, 176));
        c.MaxPositionEmbeddings.Should().Be(128);
        c.NormEpsilon.Should().Be(1e-6);
        c.RopeTheta.Should().Be(10000);
        c.RopeScaling.Should().BeNull();
        c.HiddenAct.Should().Be("silu");
        c.TieWordEmbeddings.Should().BeFalse();
        (c.AttentionBias, c.MlpBias).Should().Be((false, false));
        (c.BosTokenId, c.EosTokenId, c.PadTokenId).Should().Be((1, 2, 0));
    }

    [Fact]
    public void Qwen2_fixture()
    {
        var c = LoadFixture("qwen2");
        c.ModelType.Should().Be("qwen2");
        (c.VocabSize, c.HiddenSize, c.NumLayers, c.NumHeads, c.NumKeyValueHeads, c.HeadDim, c.IntermediateSize)
            .Should().Be((1000, 64, 2, 4, 2, 16, 176));
        c.MaxPositionEmbeddings.Should().Be(128);
        c.NormEpsilon.Should().Be(1e-6);
        c.RopeTheta.Should().Be(1_000_000);
        c.HiddenAct.Should().Be("silu");
        c.TieWordEmbeddings.Should().BeTrue();
        c.AttentionBias.Should().BeTrue();
        c.SlidingWindow.Should().BeNull();
        (c.BosTokenId, c.EosTokenId, c.PadTokenId).Should().Be((1, 2, 0));
        c.Raw["max_window_layers"]!.GetValue<int>().Should().Be(28);
    }

    private string WriteConfig(string json)
    {
        string path = _temp.File("config.json");
        File.WriteAllText(path, json);
        return path;
    }

    private static JsonObject FixtureJson(string arch) =>
        JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Model(arch), "config.json")))!.AsObject();

    [Fact]
    public void Unsupported_model_type_names_the_type_and_the_file()
    {
        string path = WriteConfig("""{"model_type":"t5","vocab_size":32128,"d_model":512}""");
        FluentActions.Invoking(() => ModelConfig.Load(path)).Should().Throw<NotSupportedException>()
            .Which.Message.Should().Be($"model_type 't5' in '{path}' is not supported; supported: {string.Join(", ", ModelConfig.SupportedModelTypes)}.");
    }

    [Fact]
    public void Missing_model_type_names_the_file()
    {
        string path = WriteConfig("""{"vocab_size":10}""");
        FluentActions.Invoking(() => ModelConfig.Load(path)).Should().Throw<InvalidDataException>()
            .Which.Message.Should().Be($"'{path}' has no model_type.");
    }

    [Theory]
    [InlineData("llama", "vocab_size", "vocab_size")]
    [InlineData("llama", "hidden_size", "hidden_size")]
    [InlineData("llama", "num_hidden_layers", "num_hidden_layers")]
    [InlineData("llama", "num_attention_heads", "num_attention_heads")]
    [InlineData("llama", "intermediate_size", "intermediate_size")]
    [InlineData("gpt2", "n_layer", "num_hidden_layers / n_layer")]
    [InlineData("bloom", "n_head", "num_attention_heads / n_head")]
    public void Missing_required_field_names_the_field(string arch, string field, string named)
    {
        var json = FixtureJson(arch);
        json.Remove(field).Should().BeTrue();
        string path = WriteConfig(json.ToJsonString());
        FluentActions.Invoking(() => ModelConfig.Load(path)).Should().Throw<InvalidDataException>()
            .Which.Message.Should().Be($"'{path}' ({arch}) has no {named}.");
    }

    [Fact]
    public void Invalid_json_names_the_file()
    {
        string path = WriteConfig("{\"model_type\": ");
        FluentActions.Invoking(() => ModelConfig.Load(path)).Should().Throw<InvalidDataException>()
            .Which.Message.Should().StartWith($"'{path}' is not a valid config.json: ");
    }

    [Fact]
    public void Missing_file_names_the_path()
    {
        string path = _temp.File("none/config.json");
        FluentActions.Invoking(() => ModelConfig.Load(path)).Should().Throw<FileNotFoundException>()
            .Which.Message.Should().Be($"No config.json at '{path}'.");
    }

    [Fact]
    public void Absent_optional_fields_take_the_transformers_defaults()
    {
        var llama = FixtureJson("llama");
        foreach (var f in new[] { "rms_norm_eps", "tie_word_embeddings", "rope_theta", "num_key_value_heads", "head_dim" }) llama.Remove(f);
        var c = ModelConfig.Parse(llama);
        c.NormEpsilon.Should().Be(1e-6);
        c.TieWordEmbeddings.Should().BeFalse();
        c.RopeTheta.Should().Be(10000);
        c.NumKeyValueHeads.Should().Be(4);
        c.HeadDim.Should().Be(16);

        var gpt2 = FixtureJson("gpt2");
        gpt2.Remove("layer_norm_epsilon");
        ModelConfig.Parse(gpt2).NormEpsilon.Should().Be(1e-5);
        ModelConfig.Parse(gpt2).TieWordEmbeddings.Should().BeTrue();
    }

    [Fact]
    public void Eos_list_takes_the_first_id_and_bloom_n_embed_is_the_hidden_size()
    {
        var bloom = FixtureJson("bloom");
        bloom.Remove("hidden_size");
        bloom["n_embed"] = 32;
        bloom["eos_token_id"] = new JsonArray(5, 6);
        var c = ModelConfig.Parse(bloom);
        c.HiddenSize.Should().Be(32);
        c.HeadDim.Should().Be(8);
        c.EosTokenId.Should().Be(5);
    }
}
