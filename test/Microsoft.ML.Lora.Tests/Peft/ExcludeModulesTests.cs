using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Peft;

/// <summary>
/// PEFT 0.18's exclude_modules (LoRA and IA3): a list (exact path or "." + name suffix) or a string (re.fullmatch),
/// checked before target_modules; written to and read from adapter_config.json as PEFT does; PEFT's errors and warning.
/// The expected paths are the fixture models' module names (tiny llama: 2 layers of 7 linears; gpt2: 2 blocks of
/// attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj).
/// </summary>
[Collection("TorchGlobalRng")]
public sealed class ExcludeModulesTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("mllora-exclude-");

    public void Dispose() => _dir.Delete(true);

    private static readonly LoraConfig R8 = new() { R = 8, LoraAlpha = 16 };

    private static CausalLm Llama() => ModelLoader.Load(Fixtures.Model("llama"));
    private static CausalLm Gpt2() => ModelLoader.Load(Fixtures.Model("gpt2"));

    private JsonObject SavedConfig() => JsonNode.Parse(File.ReadAllText(Path.Combine(_dir.FullName, "adapter_config.json")))!.AsObject();

    private static string[] Strings(JsonNode? n) => [.. n!.AsArray().Select(x => x!.GetValue<string>())];

    private static string[] Linears(string[] layers, params string[] names) => [.. layers.SelectMany(l => names.Select(n => $"{l}.{n}"))];

    [Fact]
    public void A_list_excludes_full_paths_and_name_suffixes_and_leaves_those_modules_unwrapped()
    {
        using var scope = NewDisposeScope();
        var warnings = new List<string>();
        var lm = PeftModel.GetPeftModel(Llama(), R8 with { TargetModules = ["q_proj", "v_proj", "o_proj"], ExcludeModules = ["model.layers.0.self_attn.q_proj", "o_proj"] },
            warning: warnings.Add);
        lm.Layers.Keys.Should().Equal("model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj");
        // The excluded modules are still the model's own linears, not LoRA wrappers.
        ModuleSurgery.Get(lm.GetBaseModel(), "model.layers.0.self_attn.q_proj").Should().NotBeOfType<LoraLinear>();
        ModuleSurgery.Get(lm.GetBaseModel(), "model.layers.1.self_attn.o_proj").Should().NotBeOfType<LoraLinear>();
        warnings.Should().BeEmpty();
    }

    [Fact]
    public void A_list_entry_is_a_dotted_suffix_so_a_longer_name_tells_attention_from_mlp_on_gpt2()
    {
        using var scope = NewDisposeScope();
        var lm = PeftModel.GetPeftModel(Gpt2(), R8 with { TargetModules = ["c_attn", "c_proj"], ExcludeModules = ["mlp.c_proj"] }, warning: _ => { });
        lm.Layers.Keys.Should().Equal(Linears(["transformer.h.0", "transformer.h.1"], "attn.c_attn", "attn.c_proj"));
    }

    [Fact]
    public void A_regex_excludes_by_full_match_with_all_linear_and_with_a_target_regex()
    {
        using var scope = NewDisposeScope();
        var allLinear = PeftModel.GetPeftModel(Llama(), R8 with { TargetModules = [LoraConfig.AllLinear], ExcludeModulesRegex = @".*\.mlp\..*" });
        allLinear.Layers.Keys.Should().Equal(Linears(["model.layers.0", "model.layers.1"], "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"));

        var gpt2 = PeftModel.GetPeftModel(Gpt2(), R8 with { TargetModulesRegex = @".*\.c_proj", ExcludeModulesRegex = @"transformer\.h\.0\..*" }, warning: _ => { });
        gpt2.Layers.Keys.Should().Equal("transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_proj");

        // re.fullmatch: "mlp" as a string excludes nothing (no path is just "mlp"), and PEFT warns.
        var warnings = new List<string>();
        var bare = PeftModel.GetPeftModel(Llama(), R8 with { TargetModules = [LoraConfig.AllLinear], ExcludeModulesRegex = "mlp" }, warning: warnings.Add);
        bare.Layers.Should().HaveCount(14);
        warnings.Should().Equal("You have passed exclude_modules=mlp but no modules were excluded. Please check that exclude_modules was set correctly.");
    }

    [Fact]
    public void A_list_is_written_sorted_as_peft_writes_its_set_and_loads_back_onto_the_same_layers_without_warning()
    {
        using var scope = NewDisposeScope();
        var config = R8 with { TargetModules = ["v_proj", "q_proj"], ExcludeModules = ["v_proj", "model.layers.0.self_attn.q_proj"], InitLoraWeights = LoraInit.Random };
        var lm = PeftModel.GetPeftModel(Llama(), config);
        lm.Layers.Keys.Should().Equal("model.layers.1.self_attn.q_proj");
        PeftAdapterIO.Save(lm, _dir.FullName);
        var json = SavedConfig();
        Strings(json["exclude_modules"]).Should().Equal("model.layers.0.self_attn.q_proj", "v_proj");
        // PEFT keeps target names whose only matches were excluded: the file describes the same selection.
        Strings(json["target_modules"]).Should().Equal("q_proj", "v_proj");

        var reloaded = PeftAdapterIO.Load(Llama(), _dir.FullName);
        reloaded.Layers.Keys.Should().Equal(lm.Layers.Keys);
        reloaded.Config.ExcludeModules.Should().Equal("model.layers.0.self_attn.q_proj", "v_proj");
        reloaded.Config.ExcludeModulesRegex.Should().BeNull();
        reloaded.Layers["model.layers.1.self_attn.q_proj"].LoraA("default").allclose(lm.Layers["model.layers.1.self_attn.q_proj"].LoraA("default"), rtol: 0, atol: 0).Should().BeTrue();
        var warnings = new List<string>();
        PeftModel.GetPeftModel(Llama(), reloaded.Config, warning: warnings.Add);
        warnings.Should().BeEmpty();
    }

    [Fact]
    public void A_regex_is_written_as_a_string_no_exclusion_as_null_and_all_linear_keeps_the_excluded_paths_in_target_modules()
    {
        using var scope = NewDisposeScope();
        var lm = PeftModel.GetPeftModel(Llama(), R8 with { TargetModules = [LoraConfig.AllLinear], ExcludeModulesRegex = @".*\.0\..*" });
        lm.Layers.Should().HaveCount(7);
        PeftAdapterIO.Save(lm, _dir.FullName);
        var json = SavedConfig();
        json["exclude_modules"]!.GetValue<string>().Should().Be(@".*\.0\..*");
        // PEFT's _maybe_include_all_linear_layers resolves the 14 linears before any is excluded.
        Strings(json["target_modules"]).Should().HaveCount(14).And.Contain("model.layers.0.mlp.down_proj");
        var reloaded = PeftAdapterIO.Load(Llama(), _dir.FullName);
        reloaded.Layers.Keys.Should().Equal(lm.Layers.Keys);
        reloaded.Config.ExcludeModulesRegex.Should().Be(@".*\.0\..*");

        PeftAdapterIO.Save(PeftModel.GetPeftModel(Llama(), R8), _dir.FullName);
        SavedConfig().Should().ContainKey("exclude_modules");
        SavedConfig()["exclude_modules"].Should().BeNull();
    }

    [Theory]
    [InlineData("list")]
    [InlineData("regex")]
    public void A_peft_adapter_folder_with_exclude_modules_loads_onto_the_layers_it_was_trained_on(string form)
    {
        using var scope = NewDisposeScope();
        // As PEFT 0.18 saves LoraConfig(target_modules=["q_proj", "v_proj"], exclude_modules=...) excluding layer 0's q_proj.
        string[] adapted = ["model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"];
        var tensors = adapted.Select((p, i) => (Path: p, A: randn(8, 64), B: full(p.EndsWith("q_proj") ? 64L : 32L, 8L, i + 1.0f))).ToList();
        SafeTensorsWriter.Save(Path.Combine(_dir.FullName, "adapter_model.safetensors"),
            [.. tensors.SelectMany(t => new[] { KeyValuePair.Create($"base_model.model.{t.Path}.lora_A.weight", t.A), KeyValuePair.Create($"base_model.model.{t.Path}.lora_B.weight", t.B) })],
            new Dictionary<string, string> { ["format"] = "pt" });
        File.WriteAllText(Path.Combine(_dir.FullName, "adapter_config.json"), new JsonObject
        {
            ["peft_type"] = "LORA", ["task_type"] = "CAUSAL_LM", ["r"] = 8, ["lora_alpha"] = 16, ["target_modules"] = new JsonArray("v_proj", "q_proj"),
            ["exclude_modules"] = form == "list" ? new JsonArray("model.layers.0.self_attn.q_proj") : JsonValue.Create(@"model\.layers\.0\.self_attn\.q_proj"),
            ["bias"] = "none",
        }.ToJsonString());
        var lm = PeftAdapterIO.Load(Llama(), _dir.FullName);
        lm.Layers.Keys.Should().Equal(adapted);
        foreach (var t in tensors)
        {
            lm.Layers[t.Path].LoraA("default").allclose(t.A, rtol: 0, atol: 0).Should().BeTrue();
            lm.Layers[t.Path].LoraB("default").allclose(t.B, rtol: 0, atol: 0).Should().BeTrue();
        }
    }

    [Fact]
    public void Every_module_excluded_is_peft_s_all_modules_were_excluded_error()
    {
        var lora = () => PeftModel.GetPeftModel(Llama(), R8 with { ExcludeModulesRegex = ".*" });
        lora.Should().Throw<ArgumentException>().WithMessage(
            "All modules were excluded. This is likely unintended. Check your `target_modules`, `exclude_modules` and `modules_to_save` configuration.");
        var ia3 = () => PeftModel.GetPeftModel(Llama(), new IA3Config { ExcludeModulesRegex = ".*" });
        ia3.Should().Throw<ArgumentException>().WithMessage("All modules were excluded.*");
    }

    [Fact]
    public void Every_target_excluded_is_peft_s_no_modules_were_targeted_error_with_its_layers_notes()
    {
        const string Peft = "No modules were targeted for adaptation. This might be caused by a combination of mismatched target modules and excluded modules. " +
            "Please check your `target_modules` and `exclude_modules` configuration. You may also have only targeted modules that are marked to be saved (`modules_to_save`).";
        var act = () => PeftModel.GetPeftModel(Llama(), R8 with { TargetModules = ["q_proj"], ExcludeModules = ["q_proj"] });
        act.Should().Throw<ArgumentException>().Which.Message.Should().Be(Peft);
        var layers = () => PeftModel.GetPeftModel(Llama(), R8 with
        {
            TargetModules = ["q_proj"], LayersToTransform = [1], LayersPattern = ["layers"], ExcludeModules = ["model.layers.1.self_attn.q_proj"],
        });
        layers.Should().Throw<ArgumentException>().Which.Message.Should().Be(Peft + " Note: You specified 'layers_to_transform': [1]. You also specified 'layers_pattern': ['layers'].");
    }

    [Fact]
    public void An_exclusion_that_matches_nothing_gives_peft_s_warning_and_both_forms_at_once_are_refused()
    {
        using var scope = NewDisposeScope();
        var warnings = new List<string>();
        var lm = PeftModel.GetPeftModel(Llama(), R8 with { ExcludeModules = ["not_a_module", "gate"] }, warning: warnings.Add);
        lm.Layers.Should().HaveCount(4);
        warnings.Should().Equal("You have passed exclude_modules={'gate', 'not_a_module'} but no modules were excluded. Please check that exclude_modules was set correctly.");

        var both = () => PeftModel.GetPeftModel(Llama(), R8 with { ExcludeModules = ["q_proj"], ExcludeModulesRegex = "q_proj" });
        both.Should().Throw<ArgumentException>().Which.Message.Should().Contain("ExcludeModules").And.Contain("not both");
    }

    [Fact]
    public void IA3_excludes_as_lora_writes_exclude_modules_and_loads_back()
    {
        using var scope = NewDisposeScope();
        var config = new IA3Config { TargetModules = ["k_proj", "v_proj", "down_proj"], FeedforwardModules = ["down_proj"], ExcludeModules = ["down_proj", "layers.1.self_attn.k_proj"] };
        var lm = PeftModel.GetPeftModel(Llama(), config);
        lm.IA3Layers.Keys.Should().Equal("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.v_proj");
        PeftParameterCount.IA3(Llama().Config, config).Should().Be(lm.GetNbTrainableParameters().Trainable);
        PeftAdapterIO.Save(lm, _dir.FullName);
        Strings(SavedConfig()["exclude_modules"]).Should().Equal("down_proj", "layers.1.self_attn.k_proj");
        var reloaded = PeftAdapterIO.Load(Llama(), _dir.FullName);
        reloaded.IA3Layers.Keys.Should().Equal(lm.IA3Layers.Keys);
        ((IA3Config)reloaded.PeftConfig).ExcludeModules.Should().Equal("down_proj", "layers.1.self_attn.k_proj");
    }

    [Fact]
    public void The_parameter_count_without_the_model_leaves_the_excluded_modules_out()
    {
        using var scope = NewDisposeScope();
        var config = R8 with { TargetModules = [LoraConfig.AllLinear], ExcludeModules = ["mlp.up_proj", "model.layers.0.self_attn.q_proj"] };
        var lm = PeftModel.GetPeftModel(Llama(), config);
        lm.Layers.Should().HaveCount(11);
        PeftParameterCount.Lora(Llama().Config, config).Should().Be(lm.GetNbTrainableParameters().Trainable);
    }

    [Fact]
    public void The_ml_net_option_exclude_modules_reaches_the_lora_config()
    {
        var options = new LoraCausalLmOptions { BaseModelFolder = Fixtures.Model("llama"), Lora = { ExcludeModules = ["o_proj"] } };
        options.ToLoraConfig().ExcludeModules.Should().Equal("o_proj");
        options.Lora.IsDefault.Should().BeFalse();
        new LoraCausalLmOptions().ToLoraConfig().ExcludeModules.Should().BeNull();
    }
}
