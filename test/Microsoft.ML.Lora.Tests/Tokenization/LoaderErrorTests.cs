using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Tokenization;

namespace Microsoft.ML.Lora.Tests.Tokenization;

public sealed class LoaderErrorTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("mllora-tok-");

    public void Dispose() => _dir.Delete(true);

    [Fact]
    public void FolderWithoutTokenizerFilesFails()
    {
        var act = () => HfTokenizer.Load(_dir.FullName);
        act.Should().Throw<FileNotFoundException>()
            .Which.Message.Should().Contain("tokenizer.json").And.Contain("vocab.json").And.Contain(_dir.FullName);
    }

    [Theory]
    [InlineData("pre_tokenizer", """{"type":"BertPreTokenizer"}""", "pre_tokenizer 'BertPreTokenizer'")]
    [InlineData("normalizer", """{"type":"Lowercase"}""", "normalizer 'Lowercase'")]
    [InlineData("decoder", """{"type":"WordPiece","prefix":"##"}""", "decoder 'WordPiece'")]
    [InlineData("model", """{"type":"Unigram","vocab":[]}""", "model 'Unigram'")]
    public void UnsupportedComponentNamesItAndTheFile(string key, string json, string expected)
    {
        var root = new JsonObject
        {
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = new JsonObject { ["a"] = 0 }, ["merges"] = new JsonArray() },
            ["added_tokens"] = new JsonArray(),
        };
        root[key] = JsonNode.Parse(json);
        var path = Path.Combine(_dir.FullName, "tokenizer.json");
        File.WriteAllText(path, root.ToJsonString());
        var act = () => HfTokenizer.Load(_dir.FullName);
        act.Should().Throw<NotSupportedException>().Which.Message.Should().Contain(expected).And.Contain(path);
    }
}
