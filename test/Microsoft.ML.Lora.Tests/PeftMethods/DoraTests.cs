using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;
using Generator = Microsoft.ML.Lora.Generation.Generator;

namespace Microsoft.ML.Lora.Tests.PeftMethods;

/// <summary>DoRA (LoRA with use_dora) against shared/fixtures/peft/dora (PEFT 0.18).</summary>
public class DoraTests(ITestOutputHelper output)
{
    private static readonly LoraConfig PeftConfig = new() { R = 8, LoraAlpha = 16, UseDora = true };

    [Fact]
    public void Init_magnitude_is_the_row_norm_and_the_model_equals_the_base()
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture("dora", "llama");
        var model = ModelLoader.Load(Fixtures.Model("llama"));
        model.eval();
        var lm = PeftModel.GetPeftModel(model, PeftConfig);
        lm.TrainableReport().Should().Be(f.Meta["print_trainable_parameters"]!.GetValue<string>());
        lm.StateDict().ToDictionary(kv => kv.Key, kv => string.Join(",", kv.Value.shape))
            .Should().BeEquivalentTo(f.Meta["adapter_keys"]!.AsObject().ToDictionary(kv => kv.Key, kv => string.Join(",", kv.Value!.AsArray().Select(x => x!.GetValue<long>()))));
        foreach (var (path, l) in lm.Layers)
        {
            var m = f.Load($"init.base_model.model.{path}.lora_magnitude_vector.default.weight");
            MethodFixture.RelErr(l.Magnitude("default")!, m).Should().BeLessThan(1e-6, path);
        }
        var ids = f.Load("logits_input_ids"); var mask = f.Load("logits_attention_mask");
        using var _ = no_grad();
        MethodFixture.MaxErr(model.Forward(ids, mask, Positions(ids)), f.Load("logits_init"), mask).Should().BeLessThanOrEqualTo(1e-4);
    }

    /// <summary>PEFT ran forward without position_ids: positions 0..T-1 on every row, padding or not.</summary>
    internal static Tensor Positions(Tensor ids) => arange(ids.shape[1]).unsqueeze(0).expand(ids.shape[0], -1);

    [Fact]
    public void Three_adamw_steps_reproduce_losses_gradients_and_the_trained_adapter()
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture("dora", "llama");
        var r = f.Train(PeftAdapterIO.Load(ModelLoader.Load(Fixtures.Model("llama")), f.AdapterInit));
        output.WriteLine(r.ToString());
        r.GradErr.Should().BeLessThanOrEqualTo(1e-4, "the norm is detached: the step-0 gradients of A, B and m equal PEFT's (a non-detached norm is off by 0.07)");
        r.LossErr.Should().BeLessThanOrEqualTo(1e-5);
        r.ParamErr.Should().BeLessThanOrEqualTo(1e-5);
    }

    [Fact]
    public void Trained_adapter_gives_peft_logits_merged_logits_unmerge_and_generation()
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture("dora", "llama");
        var model = ModelLoader.Load(Fixtures.Model("llama"));
        model.eval();
        var lm = PeftAdapterIO.Load(model, f.Adapter);
        lm.Config.UseDora.Should().BeTrue();
        var ids = f.Load("logits_input_ids"); var mask = f.Load("logits_attention_mask");
        using var _ = no_grad();
        var adapted = model.Forward(ids, mask, Positions(ids));
        double trained = MethodFixture.MaxErr(adapted, f.Load("logits_trained"), mask);
        var generated = new Generator(model).Generate([.. f.Load("gen_prompt_ids").data<long>().Select(x => (int)x)], new GenerationOptions { MaxNewTokens = 8, EosTokenIds = [] });

        lm.MergeAdapter();
        double merged = MethodFixture.MaxErr(model.Forward(ids, mask, Positions(ids)), f.Load("logits_merged"), mask);
        lm.UnmergeAdapter();
        double unmerged = MethodFixture.MaxErr(model.Forward(ids, mask, Positions(ids)), adapted, mask);
        output.WriteLine($"dora llama: trained {trained:E2}, merged {merged:E2}, after unmerge {unmerged:E2}");
        trained.Should().BeLessThanOrEqualTo(1e-4);
        merged.Should().BeLessThanOrEqualTo(1e-4);
        unmerged.Should().BeLessThanOrEqualTo(1e-4);
        generated.Select(x => (long)x).Should().Equal(f.Greedy()[6..]);
    }

    [Fact]
    public void Saves_peft_keys_tensors_and_config()
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture("dora", "llama");
        var lm = PeftAdapterIO.Load(ModelLoader.Load(Fixtures.Model("llama")), f.Adapter);
        using var temp = new TempFolder();
        PeftAdapterIO.Save(lm, temp.Path);
        MethodFixture.ShouldHoldTheSameTensors(temp.Path, f.Adapter);
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(temp.Path, PeftAdapterIO.ConfigFile)))!;
        json["use_dora"]!.GetValue<bool>().Should().BeTrue();
        PeftAdapterIO.ReadConfig(temp.Path).Should().BeEquivalentTo(PeftAdapterIO.ReadConfig(f.Adapter));
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("bloom")]
    public void Merge_and_unmerge_equal_the_adapted_forward_on_conv1d_and_biased_targets(string arch)
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Fixtures.Model(arch));
        model.eval();
        var lm = PeftModel.GetPeftModel(model, PeftConfig with { LoraAlpha = 16 });
        var gen = new TorchSharp.torch.Generator(7);
        using (no_grad())
            foreach (var l in lm.Layers.Values)
            {
                l.LoraB("default").copy_(randn(l.LoraB("default").shape, generator: gen) * 0.05);
                l.Magnitude("default")!.mul_(rand(l.Magnitude("default")!.shape, generator: gen) + 0.5);
            }
        var ids = tensor(new long[] { 5, 17, 99, 3, 250, 8 }).unsqueeze(0);
        using var _ = no_grad();
        var adapted = model.Forward(ids);
        var w0 = lm.Layers.Values.First().weight.clone();
        lm.MergeAdapter();
        double merged = (model.Forward(ids) - adapted).abs().max().item<float>();
        lm.UnmergeAdapter();
        double restored = (lm.Layers.Values.First().weight - w0).abs().max().item<float>();
        output.WriteLine($"dora {arch}: merged vs adapted {merged:E2}, weight after unmerge {restored:E2}");
        merged.Should().BeLessThanOrEqualTo(1e-4);
        restored.Should().BeLessThanOrEqualTo(1e-5);
        (adapted - ModelLoader.Load(Fixtures.Model(arch)).Forward(ids)).abs().max().item<float>().Should().BeGreaterThan(1e-2f, "the adapter changes the output");
    }
}
