using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Quantization;
using Xunit.Abstractions;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Quantization;

/// <summary>
/// <see cref="CausalLm.SavePretrained"/> of a quantized model writes what transformers + bitsandbytes'
/// <c>save_pretrained</c> writes: each quantized linear's bitsandbytes state dict, the other parameters, and
/// config.json's <c>quantization_config</c>; the folder loads back as the same model.
/// </summary>
public class QuantizedSaveTests(ITestOutputHelper output)
{
    private static string Nf4Folder => Path.Combine(Fixtures.Root, "quant", "llama-nf4");

    private static JsonObject Config(string folder) => JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "config.json")))!.AsObject();

    private static BitsAndBytesConfig Quantization(string mode) => mode switch
    {
        "int8" => new() { LoadIn8bit = true },
        "nf4" => new() { LoadIn4bit = true, Bnb4bitQuantType = "nf4" },
        "nf4_dq" => new() { LoadIn4bit = true, Bnb4bitQuantType = "nf4", Bnb4bitUseDoubleQuant = true },
        "fp4" => new() { LoadIn4bit = true, Bnb4bitQuantType = "fp4" },
        _ => throw new ArgumentException(mode),
    };

    /// <summary>Logits of a fixed batch (two rows, the second left-padded), without gradients.</summary>
    private static Tensor Logits(CausalLm model)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = tensor(new long[,] { { 5, 17, 42, 8, 99, 3, 61, 12 }, { 0, 0, 7, 33, 71, 2, 19, 54 } });
        var mask = tensor(new long[,] { { 1, 1, 1, 1, 1, 1, 1, 1 }, { 0, 0, 1, 1, 1, 1, 1, 1 } });
        return model.Forward(ids, mask).MoveToOuterDisposeScope();
    }

    private static string Describe(SafeTensorInfo t) => $"{t.Name} {t.DType} [{string.Join(", ", t.Shape)}]";

    [Fact]
    public void Saving_the_pre_quantized_checkpoint_writes_it_again_bit_for_bit()
    {
        using var temp = new TempFolder();
        using (var model = ModelLoader.Load(Nf4Folder)) model.SavePretrained(temp.Path);

        using var expected = SafeTensorsFile.Open(Path.Combine(Nf4Folder, "model.safetensors"));
        using var saved = SafeTensorsFile.Open(Path.Combine(temp.Path, "model.safetensors"));
        var want = expected.Tensors.Select(Describe).ToList();
        var got = saved.Tensors.Select(Describe).ToList();
        want.Except(got).Should().BeEmpty("every tensor of the transformers + bitsandbytes checkpoint is written, with its dtype and shape");
        got.Except(want).Should().BeEmpty("nothing else is written");
        foreach (var t in expected.Tensors)
            saved.ReadBytes(t.Name).Should().Equal(expected.ReadBytes(t.Name), $"'{t.Name}' is written bit for bit");
        saved.Metadata.Should().Equal(new Dictionary<string, string> { ["format"] = "pt" });

        var config = Config(temp.Path);
        var reference = Config(Nf4Folder);
        JsonNode.DeepEquals(config["quantization_config"], reference["quantization_config"]).Should().BeTrue(
            $"quantization_config is BitsAndBytesConfig.to_dict(): {config["quantization_config"]?.ToJsonString()}");
        config["quantization_config"]!.ToJsonString().Should().Be(reference["quantization_config"]!.ToJsonString(), "same keys, order and number layout (6.0)");
        config["dtype"]!.GetValue<string>().Should().Be("float32");
    }

    [Theory]
    [InlineData("llama", "int8")]
    [InlineData("llama", "nf4")]
    [InlineData("llama", "nf4_dq")]
    [InlineData("llama", "fp4")]
    [InlineData("gpt2", "int8")] // Conv1D, tied lm_head
    [InlineData("gpt2", "nf4_dq")]
    [InlineData("llama", "nf4", "bfloat16")]
    public void A_model_quantized_while_loading_saves_and_loads_back_identically(string arch, string mode, string dtype = "float32")
    {
        using var temp = new TempFolder();
        var quantization = Quantization(mode);
        var type = dtype == "bfloat16" ? ScalarType.BFloat16 : ScalarType.Float32;
        if (type == ScalarType.BFloat16) quantization = quantization with { Bnb4bitComputeDType = ScalarType.BFloat16 };
        Tensor before;
        int quantizedLayers;
        using (var model = ModelLoader.Load(Fixtures.Model(arch), new ModelLoadOptions { QuantizationConfig = quantization, DType = type }))
        {
            quantizedLayers = model.modules().OfType<IQuantizedLinear>().Count();
            quantizedLayers.Should().BeGreaterThan(0);
            before = Logits(model);
            model.SavePretrained(temp.Path);
        }

        var config = Config(temp.Path);
        JsonNode.DeepEquals(config["quantization_config"], quantization.ToJson()).Should().BeTrue($"the saved config states the quantization: {config["quantization_config"]?.ToJsonString()}");
        var dtypeKey = config.ContainsKey("torch_dtype") ? "torch_dtype" : "dtype";
        config[dtypeKey]!.GetValue<string>().Should().Be(dtype, "the model's float dtype, not the packed weights' uint8");

        using (var saved = SafeTensorsFile.Open(Path.Combine(temp.Path, "model.safetensors")))
        {
            var names = saved.Tensors.Select(t => t.Name).ToHashSet();
            string[] suffixes = mode == "int8" ? [".SCB", ".weight_format"] : [".weight.absmax", ".weight.quant_map", $".weight.quant_state.bitsandbytes__{quantization.Bnb4bitQuantType}"];
            foreach (var suffix in suffixes) names.Count(n => n.EndsWith(suffix, StringComparison.Ordinal)).Should().Be(quantizedLayers, suffix);
            names.Count(n => n.EndsWith(".weight.nested_absmax", StringComparison.Ordinal)).Should().Be(mode == "nf4_dq" ? quantizedLayers : 0);
            if (arch == "gpt2") names.Should().NotContain("lm_head.weight", "a tied lm_head is not written");
        }

        // As transformers, the dtype to load in is the caller's (config.json's dtype is not applied by itself).
        using var reloaded = ModelLoader.Load(temp.Path, type == ScalarType.Float32 ? null : new ModelLoadOptions { DType = type });
        reloaded.QuantizationConfig.Should().Be(quantization);
        reloaded.modules().OfType<IQuantizedLinear>().Count().Should().Be(quantizedLayers);
        using var after = Logits(reloaded);
        output.WriteLine($"{arch} {mode}: max |logits after - before| = {(after - before).abs().max().item<float>()}");
        after.allclose(before, 0, 0).Should().BeTrue("the saved quantized model loads back and computes the same logits exactly");
        before.Dispose();
    }

    [Fact]
    public void A_LoRA_merged_into_a_4bit_base_saves_and_loads_back_identically()
    {
        using var temp = new TempFolder();
        var model = ModelLoader.Load(Fixtures.Model("llama"), new ModelLoadOptions { QuantizationConfig = Quantization("nf4_dq") });
        var peft = PeftAdapterIO.Load(model, Path.Combine(Nf4Folder, "qlora", "adapter"));
        var act = () => model.SavePretrained(temp.File("too-early"));
        act.Should().Throw<InvalidOperationException>().WithMessage("*adapter layers*MergeAndUnload*");
        Directory.Exists(temp.File("too-early")).Should().BeFalse("nothing is written for a refused model");

        using var merged = peft.MergeAndUnload();
        using var before = Logits(merged);
        merged.SavePretrained(temp.File("merged"));
        using var reloaded = ModelLoader.Load(temp.File("merged"));
        using var after = Logits(reloaded);
        after.allclose(before, 0, 0).Should().BeTrue("the requantized merged weights are saved as they are");
    }

    [Fact]
    public void Quantized_layers_that_do_not_fit_the_quantization_config_are_refused_before_anything_is_written()
    {
        using var temp = new TempFolder();
        using var model = ModelLoader.Load(Fixtures.Model("llama"), new ModelLoadOptions { QuantizationConfig = Quantization("nf4") });
        var loaded = model.QuantizationConfig;
        void Refused(BitsAndBytesConfig? config, string message)
        {
            model.QuantizationConfig = config;
            var act = () => model.SavePretrained(temp.File("refused"));
            act.Should().Throw<InvalidOperationException>().WithMessage(message);
            Directory.Exists(temp.File("refused")).Should().BeFalse();
        }
        Refused(null, "*quantized layers ('model.layers.0.self_attn.q_proj')*no quantization config*");
        Refused(Quantization("int8"), "*'model.layers.0.self_attn.q_proj' is a Linear4bit*8-bit (load_in_8bit)*");
        Refused(loaded! with { LlmInt8SkipModules = ["lm_head", "q_proj"] }, "*'model.layers.0.self_attn.q_proj' is in the model's llm_int8_skip_modules*");
        Refused(loaded! with { LlmInt8SkipModules = [] }, "*'lm_head' is not quantized*quantizes it*");

        using var floating = ModelLoader.Load(Fixtures.Model("llama"));
        floating.QuantizationConfig.Should().BeNull();
        floating.SavePretrained(temp.File("float"));
        Config(temp.File("float")).ContainsKey("quantization_config").Should().BeFalse("a float model has no quantization_config");
    }
}
