using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Peft;

/// <summary>Which modules a LoraConfig adapts and what adapter_config.json says about it, as PEFT 0.18 decides.</summary>
[Collection("TorchGlobalRng")]
public sealed class TargetSelectionTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("mllora-targets-");

    public void Dispose() => _dir.Delete(true);

    private static readonly LoraConfig R8 = new() { R = 8, LoraAlpha = 16 };

    private static CausalLm Llama() => ModelLoader.Load(Fixtures.Model("llama"));

    private static JsonObject SavedConfig(string folder) => JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "adapter_config.json")))!.AsObject();

    [Fact]
    public void All_linear_is_written_as_the_resolved_module_paths_and_loads_back_onto_the_same_layers()
    {
        using var scope = NewDisposeScope();
        var lm = PeftModel.GetPeftModel(Llama(), R8 with { TargetModules = [LoraConfig.AllLinear] });
        lm.Layers.Should().HaveCount(14);
        lm.Layers.Keys.Should().NotContain("lm_head");
        PeftAdapterIO.Save(lm, _dir.FullName);
        var written = SavedConfig(_dir.FullName)["target_modules"]!.AsArray().Select(x => x!.GetValue<string>()).ToList();
        written.Should().BeEquivalentTo(lm.Layers.Keys); // full paths, as PEFT's _maybe_include_all_linear_layers writes them
        var reloaded = PeftAdapterIO.Load(Llama(), _dir.FullName);
        reloaded.Layers.Keys.Should().BeEquivalentTo(lm.Layers.Keys);
    }

    [Fact]
    public void All_linear_with_layers_to_transform_is_refused_as_peft_refuses_a_string_target()
    {
        var act = () => PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { TargetModules = [LoraConfig.AllLinear], LayersToTransform = [1] });
        act.Should().Throw<ArgumentException>().Which.Message.Should().Contain("layers_to_transform").And.Contain("all-linear");
    }

    [Fact]
    public void A_regex_string_is_matched_against_the_full_module_path_and_written_back_as_a_string()
    {
        using var scope = NewDisposeScope();
        var lm = PeftModel.GetPeftModel(Llama(), R8 with { TargetModulesRegex = @".*\.1\.self_attn\.(q|k)_proj" });
        lm.Layers.Keys.Should().Equal("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj");
        PeftAdapterIO.Save(lm, _dir.FullName);
        SavedConfig(_dir.FullName)["target_modules"]!.GetValue<string>().Should().Be(@".*\.1\.self_attn\.(q|k)_proj");
        // re.fullmatch: a bare name is not a suffix match when it is a string
        var bare = () => PeftModel.GetPeftModel(Llama(), R8 with { TargetModulesRegex = "q_proj" });
        bare.Should().Throw<ArgumentException>().Which.Message.Should().Contain("not found");
    }

    [Fact]
    public void A_peft_adapter_whose_target_modules_is_a_regex_string_loads()
    {
        using var scope = NewDisposeScope();
        // An adapter as PEFT saves it for target_modules=r".*\.0\.self_attn\.v_proj".
        var a = randn(8, 64); var b = randn(32, 8);
        SafeTensorsWriter.Save(Path.Combine(_dir.FullName, "adapter_model.safetensors"),
            [new("base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight", a), new("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight", b)],
            new Dictionary<string, string> { ["format"] = "pt" });
        File.WriteAllText(Path.Combine(_dir.FullName, "adapter_config.json"), new JsonObject
        {
            ["peft_type"] = "LORA", ["r"] = 8, ["lora_alpha"] = 16, ["target_modules"] = @".*\.0\.self_attn\.v_proj", ["bias"] = "none",
        }.ToJsonString());
        var lm = PeftAdapterIO.Load(Llama(), _dir.FullName);
        lm.Layers.Keys.Should().Equal("model.layers.0.self_attn.v_proj");
        lm.Layers["model.layers.0.self_attn.v_proj"].LoraB("default").allclose(b).Should().BeTrue();
    }

    [Fact]
    public void Layers_pattern_names_the_module_list_whose_index_layers_to_transform_selects()
    {
        using var scope = NewDisposeScope();
        PeftModel.GetPeftModel(Llama(), R8 with { LayersToTransform = [1], LayersPattern = ["layers"] }).Layers.Keys
            .Should().Equal("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj");
        var wrong = () => PeftModel.GetPeftModel(Llama(), R8 with { LayersToTransform = [1], LayersPattern = ["blocks"] });
        wrong.Should().Throw<ArgumentException>().Which.Message.Should().Contain("layers_pattern");
    }

    [Fact]
    public void Targets_inside_modules_to_save_are_excluded()
    {
        using var scope = NewDisposeScope();
        var lm = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), R8 with { TargetModules = ["c_attn", "c_fc"], ModulesToSave = ["c_fc"] });
        lm.Layers.Keys.Should().Equal("transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn");
    }

    [Fact]
    public void A_target_that_is_neither_linear_nor_embedding_is_refused_naming_module_and_type()
    {
        var act = () => PeftModel.GetPeftModel(Llama(), R8 with { TargetModules = ["mlp"] });
        act.Should().Throw<NotSupportedException>().Which.Message.Should().Contain("model.layers.0.mlp").And.Contain("LlamaMLP");
    }

    [Fact]
    public void A_tied_lm_head_target_is_refused_with_the_reason_and_nothing_is_written()
    {
        var act = () => PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("qwen2")), R8 with { TargetModules = ["q_proj", "lm_head"] });
        act.Should().Throw<NotSupportedException>().Which.Message.Should().Contain("lm_head").And.Contain("tie_word_embeddings");
    }

    [Fact]
    public void Names_that_matched_nothing_are_not_written_to_adapter_config()
    {
        using var scope = NewDisposeScope();
        var lm = PeftModel.GetPeftModel(Llama(), R8 with { TargetModules = ["q_proj", "not_a_module"] });
        PeftAdapterIO.Save(lm, _dir.FullName);
        SavedConfig(_dir.FullName)["target_modules"]!.AsArray().Select(x => x!.GetValue<string>()).Should().Equal("q_proj");
    }
}
