using System.IO.Compression;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.MLNet;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;

namespace Microsoft.ML.Lora.Tests.MLNet;

/// <summary>Saved models that move (zip and base folder), base-model fingerprints that rewrites cannot fool, load errors, adapters loaded without training.</summary>
[Collection("TorchGlobalRng")]
public sealed class PortableModelTests : MLNetTestBase
{
    private string SaveModel(MLContext ml, string zip, string? baseFolder = null, string? device = null)
    {
        var data = ml.Data.LoadFromEnumerable(Rows(3));
        var options = new LoraCausalLmOptions { BaseModelFolder = baseFolder ?? BaseFolder, Seed = 7 };
        if (device != null) options.Device = device;
        using var model = ml.Lora().CausalLm(options, new FakeTextGeneratorFactory()).Fit(data);
        ml.Model.Save(model, data.Schema, zip);
        return zip;
    }

    private static void RewriteSameSizeKeepingTheTime(string file)
    {
        var time = File.GetLastWriteTimeUtc(file);
        var bytes = File.ReadAllBytes(file);
        bytes[^1] ^= 0xFF;
        File.WriteAllBytes(file, bytes);
        File.SetLastWriteTimeUtc(file, time);
    }

    [Fact]
    public void A_same_size_rewrite_with_its_old_time_changes_the_fingerprint_in_the_same_process()
    {
        string before = BaseModelReference.ComputeFingerprint(BaseFolder);
        RewriteSameSizeKeepingTheTime(Path.Combine(BaseFolder, "model.safetensors"));
        BaseModelReference.ComputeFingerprint(BaseFolder).Should().NotBe(before);
    }

    [Fact]
    public void Model_Load_refuses_a_base_rewritten_with_the_same_size_and_time()
    {
        var ml = new MLContext(seed: 1);
        string zip = SaveModel(ml, Path.Combine(Root, "model.zip"));
        RewriteSameSizeKeepingTheTime(Path.Combine(BaseFolder, "model.safetensors"));
        var load = () => ml.Lora().LoadModel(zip, out _);
        load.Should().Throw<InvalidOperationException>().WithMessage($"The base model folder '{BaseFolder}' differs from the one the adapter was trained on*");
    }

    [Fact]
    public void The_fingerprint_cache_file_is_used_only_while_every_file_keeps_its_stamp()
    {
        string previous = Environment.GetEnvironmentVariable("MLLORA_CACHE") ?? "";
        Environment.SetEnvironmentVariable("MLLORA_CACHE", Path.Combine(Root, "cache"));
        try
        {
            string real = BaseModelReference.ComputeFingerprint(BaseFolder);
            string cacheFile = FingerprintCache.PathOf(BaseFolder);
            File.Exists(cacheFile).Should().BeTrue();
            // A planted value with the current stamps is believed: the cache is what a second process reads.
            File.WriteAllText(cacheFile, File.ReadAllText(cacheFile).Replace(real, "sha256:planted", StringComparison.Ordinal));
            BaseModelReference.ClearProcessCache();
            BaseModelReference.ComputeFingerprint(BaseFolder).Should().Be("sha256:planted");
            // Touching a file (same bytes, same mtime put back) changes its ctime: the planted value is no longer used.
            var weights = Path.Combine(BaseFolder, "model.safetensors");
            var time = File.GetLastWriteTimeUtc(weights);
            File.WriteAllBytes(weights, File.ReadAllBytes(weights));
            File.SetLastWriteTimeUtc(weights, time);
            BaseModelReference.ClearProcessCache();
            BaseModelReference.ComputeFingerprint(BaseFolder).Should().Be(real);
        }
        finally
        {
            Environment.SetEnvironmentVariable("MLLORA_CACHE", previous.Length == 0 ? null : previous);
            BaseModelReference.ClearProcessCache();
        }
    }

    [Fact]
    public void LoadModel_takes_a_copied_zip_and_a_moved_base_folder_and_another_device()
    {
        var ml = new MLContext(seed: 1);
        string zip = SaveModel(ml, Path.Combine(Root, "model.zip"), device: "cuda:0");
        string elsewhere = Directory.CreateDirectory(Path.Combine(Root, "elsewhere")).FullName;
        string copied = Path.Combine(elsewhere, "copied.zip");
        File.Copy(zip, copied);
        string moved = Path.Combine(elsewhere, "moved-base");
        Directory.Move(BaseFolder, moved);

        var plain = () => new MLContext(seed: 2).Model.Load(copied, out _);
        plain.Should().Throw<Exception>().Where(e => e.ToString().Contains($"The base model folder '{BaseFolder}' does not exist."));
        var lora = () => ml.Lora().LoadModel(copied, out _);
        lora.Should().Throw<DirectoryNotFoundException>().WithMessage($"The base model folder '{BaseFolder}' does not exist.");

        var loaded = (LoraCausalLmTransformer)ml.Lora().LoadModel(copied, out var schema, baseModelFolder: moved, device: "cpu");
        schema.GetColumnOrNull("Prompt").Should().NotBeNull();
        loaded.BaseModelFolder.Should().Be(moved);
        loaded.Options.Device.Should().Be("cpu");
        Column(loaded.Transform(ml.Data.LoadFromEnumerable(Rows(1))), "GeneratedText").Should().Equal("0 noitseuq|n3-r8");
        loaded.Dispose();

        File.AppendAllText(Path.Combine(moved, "config.json"), " ");
        var changed = () => ml.Lora().LoadModel(copied, out _, baseModelFolder: moved);
        changed.Should().Throw<InvalidOperationException>().WithMessage($"The base model folder '{moved}' differs from the one the adapter was trained on*");
    }

    [Fact]
    public void A_relative_base_folder_is_found_beside_the_zip()
    {
        string app = Directory.CreateDirectory(Path.Combine(Root, "app")).FullName;
        string relativeBase = Path.Combine(app, "models", "base");
        Directory.CreateDirectory(Path.GetDirectoryName(relativeBase)!);
        Directory.Move(BaseFolder, relativeBase);
        string previous = Directory.GetCurrentDirectory();
        var ml = new MLContext(seed: 1);
        try
        {
            Directory.SetCurrentDirectory(app);
            SaveModel(ml, Path.Combine(app, "model.zip"), baseFolder: Path.Combine("models", "base"));
        }
        finally { Directory.SetCurrentDirectory(previous); }

        // The whole app folder moves: the relative base is found beside the zip.
        string movedApp = Path.Combine(Root, "moved-app");
        Directory.Move(app, movedApp);
        var loaded = (LoraCausalLmTransformer)ml.Lora().LoadModel(Path.Combine(movedApp, "model.zip"), out _);
        loaded.BaseModelFolder.Should().Be(Path.Combine(movedApp, "models", "base"));
        loaded.Dispose();
    }

    [Fact]
    public void Load_errors_name_the_zip_entries_and_are_not_wrapped()
    {
        var ml = new MLContext(seed: 1);
        string zip = SaveModel(ml, Path.Combine(Root, "model.zip"));
        using (var archive = ZipFile.Open(zip, ZipArchiveMode.Update))
        {
            var entry = archive.Entries.Single(e => e.FullName.EndsWith("adapter_model.safetensors", StringComparison.Ordinal));
            string name = entry.FullName;
            entry.Delete();
            using var writer = new StreamWriter(archive.CreateEntry(name).Open());
            writer.Write("not the adapter");
        }
        var load = () => ml.Lora().LoadModel(zip, out _);
        load.Should().Throw<InvalidDataException>()
            .WithMessage("The adapter stored in the LoRA Causal LM Transformer model (entries Adapter/adapter_config.json, Adapter/adapter_model.safetensors) does not load onto the base model*")
            .Which.Message.Should().NotMatchRegex("mllora-[0-9a-f]{32}", "the temporary folder the adapter was copied to is gone when the error is read");
    }

    [Fact]
    public void LoadAdapter_gives_the_greedy_tokens_of_the_lower_level_API_for_a_fixture_adapter()
    {
        // The fixture checkpoint with a byte-level tokenizer whose 1000 ids decode to distinct strings.
        string folder = TinyBaseModel.Create(Path.Combine(Root, "llama"));
        foreach (var file in new[] { "config.json", "model.safetensors" })
            File.Copy(Path.Combine(Fixtures.Model("llama"), file), Path.Combine(folder, file), overwrite: true);
        var tokenizer = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "tokenizer.json")))!;
        var vocab = tokenizer["model"]!["vocab"]!.AsObject();
        for (int id = TinyBaseModel.VocabSize; id < 1000; id++) vocab[$"<t{id}>"] = id;
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), tokenizer.ToJsonString());
        string adapter = Path.Combine(Fixtures.Model("llama"), "lora", "labels_full", "adapter");
        int[] prompt = [518, 68, 330, 185, 575, 619];

        var ml = new MLContext(seed: 1);
        using var model = ml.Lora().LoadAdapter(adapter, new LoraCausalLmOptions
        {
            BaseModelFolder = folder, PromptTokensColumnName = "Ids", CompletionTokensColumnName = "Unused", Generation = { MaxNewTokens = 12 },
        });
        var generated = Column(model.Transform(ml.Data.LoadFromEnumerable(new[] { new QuoteIds { Ids = prompt } })), "GeneratedText").Single();

        using var baseModel = ModelLoader.Load(folder, new ModelLoadOptions());
        var lora = PeftAdapterIO.Load(baseModel, adapter);
        baseModel.eval();
        var ids = new Generator(baseModel).Generate(prompt, new GenerationOptions { MaxNewTokens = 12, EosTokenIds = [2], PadTokenId = 0 });
        ids.Should().HaveCountGreaterThan(3);
        var hf = Microsoft.ML.Lora.Tokenization.HfTokenizer.Load(folder);
        generated.Should().Be(hf.Decode(ids.Where(t => t != 2).ToList()));
    }
}
