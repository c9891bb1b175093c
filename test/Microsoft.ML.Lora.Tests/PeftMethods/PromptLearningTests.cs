using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.PeftMethods;

/// <summary>Prompt tuning (RANDOM and TEXT), prefix tuning (with and without projection) and P-tuning against shared/fixtures/peft.</summary>
public class PromptLearningTests(ITestOutputHelper output)
{
    /// <summary>The fixture's config of each folder (README's table).</summary>
    internal static PromptLearningConfig Config(string method, string arch)
    {
        string name = $"tiny-random-{arch}";
        return method switch
        {
            "prompt_tuning" => new PromptTuningConfig { NumVirtualTokens = 8, BaseModelNameOrPath = name },
            "prompt_tuning_text" => new PromptTuningConfig
            {
                NumVirtualTokens = 8, BaseModelNameOrPath = name, PromptTuningInit = PromptTuningInit.Text, PromptTuningInitText = "I think it is about",
                TokenizerNameOrPath = Fixtures.Tokenizer("gpt2"), TokenizerKwargs = new JsonObject { ["use_fast"] = false },
            },
            "prefix_tuning" => new PrefixTuningConfig { NumVirtualTokens = 8, BaseModelNameOrPath = name },
            "prefix_tuning_projection" => new PrefixTuningConfig { NumVirtualTokens = 8, BaseModelNameOrPath = name, PrefixProjection = true },
            "p_tuning" => new PromptEncoderConfig { NumVirtualTokens = 8, BaseModelNameOrPath = name },
            _ => throw new ArgumentException(method),
        };
    }

    public static TheoryData<string, string> Cases()
    {
        var d = new TheoryData<string, string>();
        foreach (var m in new[] { "prompt_tuning", "prompt_tuning_text", "prefix_tuning", "prefix_tuning_projection", "p_tuning" })
            foreach (var a in new[] { "llama", "bloom" }) d.Add(m, a);
        return d;
    }

    private static int Virtual(string method) => method.StartsWith("prefix", StringComparison.Ordinal) ? 0 : 8;

    private static double Logits(MethodFixture f, PeftModel peft, string reference, int virtualTokens)
    {
        using var _ = no_grad();
        peft.GetBaseModel().eval();
        var mask = f.Load("logits_attention_mask");
        return MethodFixture.MaxErr(peft.Forward(f.Load("logits_input_ids"), mask), f.Load(reference), mask, virtualTokens);
    }

    private static PeftModel New(string method, string arch) => PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model(arch)), Config(method, arch));

    [Theory]
    [MemberData(nameof(Cases))]
    public void Init_draws_peft_values_and_gives_peft_logits(string method, string arch)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, arch);
        var peft = New(method, arch);
        peft.PeftType.Should().Be(f.Meta["peft_config"]!["peft_type"]!.GetValue<string>());
        peft.TrainableReport().Should().Be(f.Meta["print_trainable_parameters"]!.GetValue<string>());
        peft.TrainableParameters().Select(p => p.Name).Should().Equal(f.Meta["trainable_parameter_names_in_memory"]!.AsArray().Select(x => x!.GetValue<string>()));
        double init = peft.TrainableParameters().Max(p => MethodFixture.RelErr(p.P, f.Load($"init.{p.Name}")));
        double logits = Logits(f, peft, "logits_init", Virtual(method));
        output.WriteLine($"{method} {arch}: init params max rel {init:E2}, logits_init max abs {logits:E2}");
        init.Should().BeLessThanOrEqualTo(1e-6, "the seeded generator draws torch's values in torch's order");
        logits.Should().BeLessThanOrEqualTo(1e-4);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Trainer_reproduces_losses_gradients_trained_values_and_logits(string method, string arch)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, arch);
        var peft = New(method, arch);
        using (no_grad()) foreach (var (name, p) in peft.TrainableParameters()) p.copy_(f.Load($"init.{name}")); // README: training starts from init.*
        var r = f.Train(peft, peftPrefix: "");
        double logits = Logits(f, peft, "logits_trained", Virtual(method));
        output.WriteLine($"{r}; logits_trained {logits:E2}");
        r.LossErr.Should().BeLessThanOrEqualTo(1e-5);
        r.GradErr.Should().BeLessThanOrEqualTo(1e-4);
        // Adam moves every entry by about lr per step whatever its gradient, so entries whose gradient is near 0 carry the
        // largest differences (1.2e-5 on bloom's prefix projection); the acceptance bound is 1e-4.
        r.ParamErr.Should().BeLessThanOrEqualTo(2e-5);
        logits.Should().BeLessThanOrEqualTo(1e-4);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Saved_adapters_load_give_peft_logits_and_greedy_tokens(string method, string arch)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, arch);
        double initErr = Logits(f, PeftModel.FromPretrained(ModelLoader.Load(Fixtures.Model(arch)), f.AdapterInit), "logits_init", Virtual(method));
        var peft = PeftModel.FromPretrained(ModelLoader.Load(Fixtures.Model(arch)), f.Adapter);
        peft.TrainableParameters().Should().BeEmpty("a loaded prompt adapter holds only its output, as in PEFT");
        double trained = Logits(f, peft, "logits_trained", Virtual(method));
        var prompt = f.Load("gen_prompt_ids").data<long>().Select(x => (int)x).ToList();
        var greedy = new GenerationOptions { MaxNewTokens = 8, EosTokenIds = [] };
        using var _ = no_grad();
        var withCache = peft.Generate(prompt, greedy);
        var withoutCache = peft.Generate(prompt, greedy with { UseCache = false });
        output.WriteLine($"{method} {arch}: adapter_init logits {initErr:E2}, adapter logits {trained:E2}; generated [{string.Join(", ", withCache)}]");
        initErr.Should().BeLessThanOrEqualTo(1e-4);
        trained.Should().BeLessThanOrEqualTo(1e-4);
        withCache.Select(x => (long)x).Should().Equal(f.Greedy()[prompt.Count..]);
        withoutCache.Select(x => (long)x).Should().Equal(f.Greedy("greedy_by_repeated_forward")[prompt.Count..]);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Saves_only_the_prompt_embeddings_and_peft_config_and_reloads(string method, string arch)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, arch);
        var peft = New(method, arch);
        using (no_grad()) foreach (var (name, p) in peft.TrainableParameters()) p.copy_(f.Load($"trained.{name}"));
        using var temp = new TempFolder();
        peft.SavePretrained(temp.Path);
        using (var ours = Microsoft.ML.Lora.Checkpoints.SafeTensorsFile.Open(Path.Combine(temp.Path, PeftAdapterIO.WeightsFile)))
        using (var theirs = Microsoft.ML.Lora.Checkpoints.SafeTensorsFile.Open(Path.Combine(f.Adapter, PeftAdapterIO.WeightsFile)))
        {
            ours.Tensors.Select(t => t.Name).Should().Equal("prompt_embeddings");
            ours.Info("prompt_embeddings").Shape.Should().Equal(theirs.Info("prompt_embeddings").Shape);
            MethodFixture.RelErr(ours.Load("prompt_embeddings"), theirs.Load("prompt_embeddings")).Should().BeLessThanOrEqualTo(1e-5);
        }
        var mine = PeftAdapterIO.ReadConfigJson(temp.Path);
        var peftJson = PeftAdapterIO.ReadConfigJson(f.Adapter);
        mine.Select(kv => kv.Key).Should().BeEquivalentTo(peftJson.Select(kv => kv.Key));
        foreach (var (k, v) in peftJson)
            if (k != "tokenizer_name_or_path") // PEFT recorded the path it was given
                JsonNode.DeepEquals(mine[k], v).Should().BeTrue($"{k}: ours {mine[k]?.ToJsonString()}, PEFT's {v?.ToJsonString()}");
        Logits(f, PeftModel.FromPretrained(ModelLoader.Load(Fixtures.Model(arch)), temp.Path), "logits_trained", Virtual(method)).Should().BeLessThanOrEqualTo(1e-4);
    }

    [Theory]
    [InlineData("prompt_tuning", "llama")]
    [InlineData("prefix_tuning", "bloom")]
    public void Adapters_load_switch_disable_delete_and_unload_as_peft(string method, string arch)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, arch);
        var peft = PeftModel.FromPretrained(ModelLoader.Load(Fixtures.Model(arch)), f.AdapterInit);
        peft.LoadAdapter(f.Adapter, "trained");
        Logits(f, peft, "logits_init", Virtual(method)).Should().BeLessThanOrEqualTo(1e-4, "the first adapter stays active");
        peft.SetAdapter("trained");
        Logits(f, peft, "logits_trained", Virtual(method)).Should().BeLessThanOrEqualTo(1e-4);

        var ids = f.Load("logits_input_ids"); var mask = f.Load("logits_attention_mask");
        using var plain = ModelLoader.Load(Fixtures.Model(arch));
        plain.eval();
        using (no_grad())
        using (peft.DisableAdapter())
            MethodFixture.MaxErr(peft.Forward(ids, mask), plain.Forward(ids, mask), mask).Should().Be(0, "disabled, forward is the base model's");

        peft.DeleteAdapter("trained");
        peft.ActiveAdapter.Should().Be("default");
        Logits(f, peft, "logits_init", Virtual(method)).Should().BeLessThanOrEqualTo(1e-4);
        peft.Invoking(p => p.MergeAdapter()).Should().Throw<NotSupportedException>().WithMessage("*cannot be merged*");
        peft.Invoking(p => p.LoadAdapter(f.Adapter, "again", isTrainable: true)).Should().Throw<ArgumentException>()
            .WithMessage("Cannot set a prompt learning adapter to trainable when loading pretrained adapter*");
        var unloaded = peft.Unload();
        unloaded.Should().NotBeOfType<PromptLearningModel>();
        using (no_grad()) MethodFixture.MaxErr(unloaded.Forward(ids, mask), plain.Forward(ids, mask), mask).Should().Be(0);
    }

    [Fact]
    public void Loading_trainable_is_refused_as_peft_does()
    {
        using var scope = NewDisposeScope();
        var folder = Path.Combine(Fixtures.Root, "peft", "p_tuning", "llama", "adapter");
        var act = () => PeftModel.FromPretrained(ModelLoader.Load(Fixtures.Model("llama")), folder, isTrainable: true);
        act.Should().Throw<ArgumentException>().WithMessage("Cannot set a prompt learning adapter to trainable when loading pretrained adapter.*P_TUNING*");
    }
}
