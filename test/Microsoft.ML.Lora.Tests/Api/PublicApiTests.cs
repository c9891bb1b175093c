using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Api;

/// <summary>The public lower-level API (CausalLm, PeftModel) against the PEFT adapters of shared/fixtures/models.</summary>
public class PublicApiTests(ITestOutputHelper output)
{
    /// <summary>Every fixture model whose model_type the library supports (new architectures join when they are supported).</summary>
    public static TheoryData<string> Models()
    {
        var data = new TheoryData<string>();
        foreach (var dir in Directory.GetDirectories(Path.Combine(Fixtures.Root, "models")).Order(StringComparer.Ordinal))
        {
            var type = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "config.json")))!["model_type"]!.GetValue<string>();
            if (ModelConfig.SupportedModelTypes.Contains(type) && Directory.Exists(Path.Combine(dir, "lora", "labels_full", "adapter")))
                data.Add(Path.GetFileName(dir));
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void Peft_adapter_reproduces_adapted_and_merged_logits_and_the_saved_merged_model_reloads(string arch)
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        var folder = Fixtures.Model(arch);
        var model = CausalLm.FromPretrained(folder);
        var peft = PeftModel.FromPretrained(model, Path.Combine(folder, "lora", "labels_full", "adapter"));
        peft.PeftType.Should().Be("LORA");
        peft.GetNbTrainableParameters().Trainable.Should().Be(0, "an adapter loaded without isTrainable is for inference, as in PEFT");
        using var reference = SafeTensorsFile.Open(Path.Combine(folder, "reference.safetensors"));
        var ids = reference.Load("logits_input_ids");
        var mask = reference.Load("logits_attention_mask");
        var positions = arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1); // PEFT's reference ran forward without position_ids
        var valid = mask.unsqueeze(-1).to(ScalarType.Bool);
        double MaxErr(Tensor a, string name) => (a - reference.Load(name)).abs().masked_fill(valid.logical_not(), 0).max().item<float>();
        using var _ = no_grad();

        double adapted = MaxErr(peft.Forward(ids, mask, positions), "labels_full.logits_adapted");
        var merged = peft.MergeAndUnload();
        merged.named_modules().Select(m => m.module.GetType().Namespace).Should().NotContain("Microsoft.ML.Lora.Peft");
        double mergedErr = MaxErr(merged.Forward(ids, mask, positions), "labels_full.logits_merged");
        merged.SavePretrained(temp.Path);
        var reloaded = CausalLm.FromPretrained(temp.Path);
        double reloadedErr = MaxErr(reloaded.Forward(ids, mask, positions), "labels_full.logits_merged");
        output.WriteLine($"{arch}: adapted {adapted:E3}, merged {mergedErr:E3}, saved and reloaded {reloadedErr:E3}");
        adapted.Should().BeLessThanOrEqualTo(1e-4);
        mergedErr.Should().BeLessThanOrEqualTo(1e-4);
        reloadedErr.Should().BeLessThanOrEqualTo(1e-4);
        File.Exists(Path.Combine(temp.Path, "config.json")).Should().BeTrue();
        JsonNode.Parse(File.ReadAllText(Path.Combine(temp.Path, "config.json")))!["model_type"]!.GetValue<string>().Should().Be(model.Config.ModelType);
    }

    [Fact]
    public void Merged_model_is_saved_with_the_tokenizer_files_and_the_weights_dtype()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        var baseFolder = TinyBaseModel.Create(temp.File("base"));
        var model = CausalLm.FromPretrained(baseFolder, new ModelLoadOptions { DType = ScalarType.BFloat16 });
        random.manual_seed(3);
        var peft = PeftModel.GetPeftModel(model, new LoraConfig { InitLoraWeights = LoraInit.Random });
        var act = () => model.SavePretrained(temp.File("too-early"));
        act.Should().Throw<InvalidOperationException>().WithMessage("*adapter layers*MergeAndUnload*");
        peft.MergeAndUnload().SavePretrained(temp.File("merged"));
        Directory.GetFiles(temp.File("merged")).Select(Path.GetFileName).Order(StringComparer.Ordinal)
            .Should().Equal("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json");
        File.ReadAllBytes(temp.File("merged/tokenizer.json")).Should().Equal(File.ReadAllBytes(Path.Combine(baseFolder, "tokenizer.json")));
        JsonNode.Parse(File.ReadAllText(temp.File("merged/config.json")))!["dtype"]!.GetValue<string>().Should().Be("bfloat16");
        using var st = SafeTensorsFile.Open(temp.File("merged/model.safetensors"));
        st.Tensors.Select(t => t.Name).Should().NotContain(n => n.Contains("lora") || n.Contains("base_layer"));
    }

    [Fact]
    public void Several_named_adapters_save_as_peft_does_and_load_back_into_one_model()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        var baseFolder = TinyBaseModel.Create(temp.File("base"));
        var ids = tensor(new long[] { 5, 9, 33, 71, 2 }).unsqueeze(0);
        random.manual_seed(1);
        var peft = PeftModel.GetPeftModel(CausalLm.FromPretrained(baseFolder), new LoraConfig { InitLoraWeights = LoraInit.Random });
        peft.AddAdapter("other", new LoraConfig { R = 4, InitLoraWeights = LoraInit.Random });
        using var _ = no_grad();
        var first = peft.Forward(ids);
        peft.SetAdapter("other");
        var second = peft.Forward(ids);
        peft.SavePretrained(temp.File("adapters"));
        // PEFT's layout: "default" at the root, any other adapter in a subfolder of its name.
        File.Exists(temp.File("adapters/adapter_config.json")).Should().BeTrue();
        File.Exists(temp.File("adapters/other/adapter_model.safetensors")).Should().BeTrue();

        var loaded = PeftModel.FromPretrained(CausalLm.FromPretrained(baseFolder), temp.File("adapters"));
        loaded.LoadAdapter(temp.File("adapters/other"), "other");
        loaded.Forward(ids).allclose(first, 0, 0).Should().BeTrue();
        loaded.SetAdapter("other");
        loaded.ActiveAdapter.Should().Be("other");
        ((LoraConfig)loaded.PeftConfig).R.Should().Be(4);
        loaded.Forward(ids).allclose(second, 0, 0).Should().BeTrue();
        var baseLogits = CausalLm.FromPretrained(baseFolder).Forward(ids);
        using (loaded.DisableAdapter()) loaded.Forward(ids).allclose(baseLogits, 0, 0).Should().BeTrue();
        loaded.Forward(ids).allclose(baseLogits, 0, 0).Should().BeFalse();
        var writer = new StringWriter();
        loaded.PrintTrainableParameters(writer);
        writer.ToString().Should().StartWith("trainable params: 0 || all params: ");
    }

    [Fact]
    public void Bad_folders_fail_with_the_library_exceptions_naming_file_field_and_tensor()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        var missing = () => CausalLm.FromPretrained(temp.File("nowhere"));
        missing.Should().Throw<ModelLoadException>().WithMessage("*nowhere*does not exist*");
        Directory.CreateDirectory(temp.File("empty"));
        var noConfig = () => CausalLm.FromPretrained(temp.File("empty"));
        noConfig.Should().Throw<ModelLoadException>().WithMessage("*config.json*").Which.InnerException.Should().NotBeNull();

        var baseFolder = TinyBaseModel.Create(temp.File("base"));
        var adapter = temp.File("adapter");
        PeftModel.GetPeftModel(CausalLm.FromPretrained(baseFolder), new LoraConfig()).SavePretrained(adapter);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!.AsObject();

        config["r"] = "eight";
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), config.ToJsonString());
        var wrongType = () => PeftModel.FromPretrained(CausalLm.FromPretrained(baseFolder), adapter);
        var e = wrongType.Should().Throw<PeftConfigException>().WithMessage("*adapter_config.json': field 'r' is \"eight\"; expected an integer.").Which;
        e.Field.Should().Be("r");
        e.FilePath.Should().Be(Path.Combine(adapter, "adapter_config.json"));

        config["r"] = 8;
        config["peft_type"] = "LOHA";
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), config.ToJsonString());
        var unsupported = () => PeftModel.FromPretrained(CausalLm.FromPretrained(baseFolder), adapter);
        unsupported.Should().Throw<PeftConfigException>().WithMessage("*peft_type 'LOHA' is not supported; supported: LORA, IA3*").Which.Field.Should().Be("peft_type");

        config["peft_type"] = "LORA";
        config["r"] = 4;
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), config.ToJsonString());
        var shape = () => PeftModel.FromPretrained(CausalLm.FromPretrained(baseFolder), adapter);
        shape.Should().Throw<AdapterLoadException>().WithMessage("*has shape [8, 64], the model expects [4, 64]*")
            .Which.TensorName.Should().StartWith("base_model.model.transformer.h.0.self_attention.query_key_value.lora_A");

        File.WriteAllText(Path.Combine(adapter, "adapter_model.safetensors"), "not a safetensors file");
        config["r"] = 8;
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), config.ToJsonString());
        var garbage = () => PeftModel.FromPretrained(CausalLm.FromPretrained(baseFolder), adapter);
        garbage.Should().Throw<AdapterLoadException>().Which.FilePath.Should().Be(Path.Combine(adapter, "adapter_model.safetensors"));
    }
}
