using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;
using Generator = Microsoft.ML.Lora.Generation.Generator;

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

    private static double Logits(MethodFixture f, CausalLm model, string reference, int virtualTokens)
    {
        using var _ = no_grad();
        var mask = f.Load("logits_attention_mask");
        return MethodFixture.MaxErr(model.Forward(f.Load("logits_input_ids"), mask), f.Load(reference), mask, virtualTokens);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Init_draws_peft_values_and_gives_peft_logits(string method, string arch)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, arch);
        var pl = PromptLearningModel.Apply(ModelLoader.Load(Fixtures.Model(arch)), Config(method, arch));
        pl.eval();
        pl.TrainableReport().Should().Be(f.Meta["print_trainable_parameters"]!.GetValue<string>());
        pl.TrainableParameters().Select(p => p.Name).Should().Equal(f.Meta["trainable_parameter_names_in_memory"]!.AsArray().Select(x => x!.GetValue<string>()));
        double init = pl.TrainableParameters().Max(p => MethodFixture.RelErr(p.P, f.Load($"init.{p.Name}")));
        double logits = Logits(f, pl, "logits_init", Virtual(method));
        output.WriteLine($"{method} {arch}: init params max rel {init:E2}, logits_init max abs {logits:E2}");
        init.Should().BeLessThanOrEqualTo(1e-6, "the seeded generator draws torch's values in torch's order");
        logits.Should().BeLessThanOrEqualTo(1e-4);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Three_adamw_steps_reproduce_losses_gradients_trained_values_and_logits(string method, string arch)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, arch);
        var pl = PromptLearningModel.Apply(ModelLoader.Load(Fixtures.Model(arch)), Config(method, arch));
        var trainable = pl.TrainableParameters();
        using (no_grad()) foreach (var (name, p) in trainable) p.copy_(f.Load($"init.{name}")); // README: training starts from init.*
        using var batch = f.TrainBatch();
        using var labels = pl.PrepareLabels(batch.Labels);
        pl.train();
        var grads = new Dictionary<string, Tensor>();
        var losses = MethodFixture.AdamW(trainable, () => CausalLmLoss.Mean(pl.Forward(batch.InputIds, batch.AttentionMask), labels), 3, grads);
        pl.eval();
        double lossErr = MethodFixture.LossRelErr(losses, f.Losses);
        double gradErr = grads.Max(g => MethodFixture.RelErr(g.Value, f.Load($"grad_step0.{g.Key}")));
        double paramErr = MethodFixture.MaxAbsErr(trainable, n => f.Load($"trained.{n}"));
        double logits = Logits(f, pl, "logits_trained", Virtual(method));
        output.WriteLine($"{method} {arch}: losses [{string.Join(", ", losses.Select(x => x.ToString("F6")))}] max rel {lossErr:E2}; step-0 grad rel {gradErr:E2}; trained max abs {paramErr:E2}; logits_trained {logits:E2}");
        lossErr.Should().BeLessThanOrEqualTo(1e-5);
        gradErr.Should().BeLessThanOrEqualTo(1e-4);
        // Adam moves every entry by about lr per step whatever its gradient, so entries whose gradient is near 0 carry the
        // largest differences (1.2e-5 on bloom's prefix projection); the acceptance bound is 1e-4.
        paramErr.Should().BeLessThanOrEqualTo(2e-5);
        logits.Should().BeLessThanOrEqualTo(1e-4);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Saved_adapters_load_give_peft_logits_and_greedy_tokens(string method, string arch)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, arch);
        var init = PromptLearningModel.Load(ModelLoader.Load(Fixtures.Model(arch)), f.AdapterInit);
        init.eval();
        double initErr = Logits(f, init, "logits_init", Virtual(method));
        var pl = PromptLearningModel.Load(ModelLoader.Load(Fixtures.Model(arch)), f.Adapter);
        pl.eval();
        pl.TrainableParameters().Should().BeEmpty("a loaded prompt adapter holds only its output, as in PEFT");
        double trained = Logits(f, pl, "logits_trained", Virtual(method));
        var prompt = f.Load("gen_prompt_ids").data<long>().Select(x => (int)x).ToList();
        var greedy = new GenerationOptions { MaxNewTokens = 8, EosTokenIds = [] };
        using var _ = no_grad();
        var withCache = new Generator(pl).Generate(prompt, greedy);
        var withoutCache = new Generator(pl).Generate(prompt, greedy with { UseCache = false });
        output.WriteLine($"{method} {arch}: adapter_init logits {initErr:E2}, adapter logits {trained:E2}; generated [{string.Join(", ", withCache)}]");
        initErr.Should().BeLessThanOrEqualTo(1e-4);
        trained.Should().BeLessThanOrEqualTo(1e-4);
        withCache.Select(x => (long)x).Should().Equal(f.Greedy()[6..]);
        withoutCache.Select(x => (long)x).Should().Equal(f.Greedy("greedy_by_repeated_forward")[6..]);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Saves_only_the_prompt_embeddings_and_peft_config(string method, string arch)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, arch);
        var pl = PromptLearningModel.Apply(ModelLoader.Load(Fixtures.Model(arch)), Config(method, arch));
        using (no_grad()) foreach (var (name, p) in pl.TrainableParameters()) p.copy_(f.Load($"trained.{name}"));
        using var temp = new TempFolder();
        pl.Save(temp.Path);
        using var ours = Microsoft.ML.Lora.Checkpoints.SafeTensorsFile.Open(Path.Combine(temp.Path, PeftAdapterIO.WeightsFile));
        using var peft = Microsoft.ML.Lora.Checkpoints.SafeTensorsFile.Open(Path.Combine(f.Adapter, PeftAdapterIO.WeightsFile));
        ours.Tensors.Select(t => t.Name).Should().Equal("prompt_embeddings");
        ours.Info("prompt_embeddings").Shape.Should().Equal(peft.Info("prompt_embeddings").Shape);
        MethodFixture.RelErr(ours.Load("prompt_embeddings"), peft.Load("prompt_embeddings")).Should().BeLessThanOrEqualTo(1e-5);
        var mine = PeftAdapterIO.ReadConfigJson(temp.Path);
        var theirs = PeftAdapterIO.ReadConfigJson(f.Adapter);
        mine.Select(kv => kv.Key).Should().BeEquivalentTo(theirs.Select(kv => kv.Key));
        foreach (var (k, v) in theirs)
            if (k != "tokenizer_name_or_path") // PEFT recorded the path it was given
                JsonNode.DeepEquals(mine[k], v).Should().BeTrue($"{k}: ours {mine[k]?.ToJsonString()}, PEFT's {v?.ToJsonString()}");
    }
}
