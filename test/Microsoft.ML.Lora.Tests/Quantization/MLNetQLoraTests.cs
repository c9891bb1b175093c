using System.IO.Compression;
using Microsoft.ML.Data;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Quantization;
using Microsoft.ML.Lora.Tests.MLNet;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Quantization;

/// <summary>QLoRA through ML.NET: LoraCausalLmOptions.Quantization, saved with the model; the adapter is PEFT's, for the float base.</summary>
public sealed class MLNetQLoraTests
{
    private static Row[] Rows() => [new() { Prompt = "sky ->: ", Completion = "blue" }, new() { Prompt = "grass ->: ", Completion = "green" }, new() { Prompt = "snow ->: ", Completion = "white" }];

    [Fact]
    public void A_QLoRA_adapter_trained_through_MLNet_is_a_PEFT_adapter_of_the_unquantized_base()
    {
        using var temp = new TempFolder();
        var folder = TinyBaseModel.Create(temp.File("tiny-llama"), "llama", hiddenSize: 64, layers: 2, heads: 4, seed: 4);
        var ml = new MLContext(seed: 1);
        var data = ml.Data.LoadFromEnumerable(Rows());
        var options = new LoraCausalLmOptions
        {
            BaseModelFolder = folder,
            Seed = 5,
            Lora = { Rank = 4, Alpha = 8, Dropout = 0f },
            Training = { MaxSteps = 3, BatchSize = 2, LearningRate = 1e-2f },
            Generation = { MaxNewTokens = 3, BatchSize = 2 },
            Quantization = new BitsAndBytesConfig { LoadIn4bit = true, Bnb4bitQuantType = "nf4", Bnb4bitUseDoubleQuant = true },
        };
        string zip = temp.File("qlora.zip");
        List<string> generated;
        using (var model = ml.Lora().CausalLm(options).Fit(data))
        {
            generated = model.Transform(data).GetColumn<string>("GeneratedText").ToList();
            ml.Model.Save(model, data.Schema, zip);
        }

        // Saved with the model: loading it quantizes the base again and generates the same text.
        var ml2 = new MLContext(seed: 2);
        var loaded = ml2.Model.Load(zip, out _);
        try { loaded.Transform(ml2.Data.LoadFromEnumerable(Rows())).GetColumn<string>("GeneratedText").Should().Equal(generated); }
        finally { ((IDisposable)loaded).Dispose(); }

        var adapter = temp.File("adapter");
        Directory.CreateDirectory(adapter);
        using (var archive = ZipFile.OpenRead(zip))
        {
            var saved = JsonNode.Parse(new StreamReader(archive.Entries.Single(e => e.FullName.EndsWith("Options.json", StringComparison.Ordinal)).Open()).ReadToEnd())!;
            saved["Quantization"]!["LoadIn4bit"]!.GetValue<bool>().Should().BeTrue();
            saved["Quantization"]!["Bnb4bitQuantType"]!.GetValue<string>().Should().Be("nf4");
            foreach (var name in new[] { "adapter_config.json", "adapter_model.safetensors" })
                archive.Entries.Single(e => e.FullName.Replace('\\', '/').EndsWith("Adapter/" + name, StringComparison.Ordinal)).ExtractToFile(Path.Combine(adapter, name));
        }

        // PEFT's format: its config and its key names.
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!;
        config["peft_type"]!.GetValue<string>().Should().Be("LORA");
        config["r"]!.GetValue<int>().Should().Be(4);
        using var file = SafeTensorsFile.Open(Path.Combine(adapter, "adapter_model.safetensors"));
        file.Tensors.Should().OnlyContain(t => t.Name.StartsWith("base_model.model.model.layers.", StringComparison.Ordinal)
            && (t.Name.EndsWith(".lora_A.weight", StringComparison.Ordinal) || t.Name.EndsWith(".lora_B.weight", StringComparison.Ordinal)) && t.DType == SafeTensorsDType.F32);

        // It loads on the unquantized base: float layers under the same trained weights.
        using var scope = NewDisposeScope();
        using var floatBase = ModelLoader.Load(folder);
        var lm = PeftAdapterIO.Load(floatBase, adapter);
        lm.Layers.Should().NotBeEmpty();
        foreach (var (path, layer) in lm.Layers)
        {
            layer.BaseLayer.Should().BeOfType<Microsoft.ML.Lora.Models.Layers.Linear>(path);
            layer.LoraB("default").allclose(file.Load($"base_model.model.{path}.lora_B.weight"), 0, 0).Should().BeTrue(path);
            layer.LoraB("default").abs().max().item<float>().Should().BeGreaterThan(0, "3 steps trained lora_B away from its zero init");
        }
    }
}
