using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;
using Generator = Microsoft.ML.Lora.Generation.Generator;

namespace Microsoft.ML.Lora.Tests.PeftMethods;

/// <summary>(IA)³ against shared/fixtures/peft/ia3 (PEFT 0.18, IA3Config() with llama's defaults).</summary>
public class IA3Tests(ITestOutputHelper output)
{
    private static Dictionary<string, string> Shapes(IEnumerable<KeyValuePair<string, Tensor>> state) => state.ToDictionary(kv => kv.Key, kv => string.Join(",", kv.Value.shape));

    [Fact]
    public void Defaults_select_peft_targets_vectors_start_at_one_and_the_model_equals_the_base()
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture("ia3", "llama");
        var model = ModelLoader.Load(Fixtures.Model("llama"));
        model.eval();
        var ia3 = PeftModel.GetPeftModel(model, new IA3Config());
        ia3.TrainableReport().Should().Be(f.Meta["print_trainable_parameters"]!.GetValue<string>());
        ia3.TrainableParameters().Select(p => "base_model.model." + p.Name)
            .Should().Equal(f.Meta["trainable_parameter_names_in_memory"]!.AsArray().Select(x => x!.GetValue<string>()));
        Shapes(ia3.StateDict()).Should().BeEquivalentTo(f.Meta["adapter_keys"]!.AsObject().ToDictionary(kv => kv.Key, kv => string.Join(",", kv.Value!.AsArray().Select(x => x!.GetValue<long>()))));
        ia3.IA3Layers.Where(l => l.Value.IsFeedforward).Select(l => l.Key).Should().OnlyContain(p => p.EndsWith("mlp.down_proj"));
        foreach (var (name, p) in ia3.TrainableParameters()) p.allclose(f.Load($"init.base_model.model.{name}"), 0, 0).Should().BeTrue(name);
        var ids = f.Load("logits_input_ids"); var mask = f.Load("logits_attention_mask");
        using var _ = no_grad();
        MethodFixture.MaxErr(model.Forward(ids, mask, DoraTests.Positions(ids)), f.Load("logits_init"), mask).Should().BeLessThanOrEqualTo(1e-4);
    }

    [Fact]
    public void Three_adamw_steps_reproduce_losses_gradients_and_the_trained_adapter()
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture("ia3", "llama");
        var r = f.Train(PeftAdapterIO.Load(ModelLoader.Load(Fixtures.Model("llama")), f.AdapterInit));
        output.WriteLine(r.ToString());
        r.LossErr.Should().BeLessThanOrEqualTo(1e-5);
        r.GradErr.Should().BeLessThanOrEqualTo(1e-4);
        r.ParamErr.Should().BeLessThanOrEqualTo(1e-5);
    }

    [Fact]
    public void Trained_adapter_gives_peft_logits_merged_logits_and_generation()
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture("ia3", "llama");
        var model = ModelLoader.Load(Fixtures.Model("llama"));
        model.eval();
        var ia3 = PeftAdapterIO.Load(model, f.Adapter);
        var ids = f.Load("logits_input_ids"); var mask = f.Load("logits_attention_mask");
        using var _ = no_grad();
        double trained = MethodFixture.MaxErr(model.Forward(ids, mask, DoraTests.Positions(ids)), f.Load("logits_trained"), mask);
        var generated = new Generator(model).Generate([.. f.Load("gen_prompt_ids").data<long>().Select(x => (int)x)], new GenerationOptions { MaxNewTokens = 8, EosTokenIds = [] });
        var merged = ia3.MergeAndUnload();
        merged.modules().OfType<IA3Linear>().Should().BeEmpty();
        double mergedErr = MethodFixture.MaxErr(merged.Forward(ids, mask, DoraTests.Positions(ids)), f.Load("logits_merged"), mask);
        output.WriteLine($"ia3 llama: trained {trained:E2}, merged {mergedErr:E2}");
        trained.Should().BeLessThanOrEqualTo(1e-4);
        mergedErr.Should().BeLessThanOrEqualTo(1e-4);
        generated.Select(x => (long)x).Should().Equal(f.Greedy()[6..]);
    }

    [Fact]
    public void Saves_peft_keys_tensors_and_config()
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture("ia3", "llama");
        var ia3 = PeftAdapterIO.Load(ModelLoader.Load(Fixtures.Model("llama")), f.Adapter);
        using var temp = new TempFolder();
        ia3.SavePretrained(temp.Path);
        MethodFixture.ShouldHoldTheSameTensors(temp.Path, f.Adapter);
        var mine = PeftAdapterIO.ReadConfigJson(temp.Path);
        var theirs = PeftAdapterIO.ReadConfigJson(f.Adapter);
        mine.Select(kv => kv.Key).Should().BeEquivalentTo(theirs.Select(kv => kv.Key));
        foreach (var (k, v) in theirs)
            if (v is JsonArray a) mine[k]!.AsArray().Select(x => x!.ToJsonString()).Should().BeEquivalentTo(a.Select(x => x!.ToJsonString()), k); // PEFT writes sets unordered
            else JsonNode.DeepEquals(mine[k], v).Should().BeTrue($"{k}: ours {mine[k]?.ToJsonString()}, PEFT's {v?.ToJsonString()}");
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("bloom")]
    public void Merge_equals_the_adapted_forward_on_conv1d_and_biased_targets(string arch)
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Fixtures.Model(arch));
        model.eval();
        var ia3 = PeftModel.GetPeftModel(model, new IA3Config());
        ((IA3Config)ia3.PeftConfig).FanInFanOut.Should().Be(arch == "gpt2");
        var gen = new TorchSharp.torch.Generator(7);
        using (no_grad()) foreach (var (_, p) in ia3.TrainableParameters()) p.copy_(rand(p.shape, generator: gen) + 0.5);
        var ids = tensor(new long[] { 5, 17, 99, 3, 250, 8 }).unsqueeze(0);
        using var _ = no_grad();
        var adapted = model.Forward(ids);
        ia3.MergeAdapter();
        double err = (model.Forward(ids) - adapted).abs().max().item<float>();
        output.WriteLine($"ia3 {arch}: merged vs adapted max abs {err:E2}");
        err.Should().BeLessThanOrEqualTo(1e-4);
        (adapted - ModelLoader.Load(Fixtures.Model(arch)).Forward(ids)).abs().max().item<float>().Should().BeGreaterThan(1e-2f, "the vectors change the output");
    }

    [Fact]
    public void Delete_adapter_removes_its_vectors_and_the_first_adapter_becomes_active()
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Fixtures.Model("llama"));
        model.eval();
        var ids = tensor(new long[] { 5, 17, 99, 3, 250, 8 }).unsqueeze(0);
        using var _ = no_grad();
        var baseLogits = model.Forward(ids);
        var ia3 = PeftModel.GetPeftModel(model, new IA3Config());
        ia3.AddAdapter("second", new IA3Config { InitIA3Weights = false }); // random vectors: the model differs from the base
        ia3.SetAdapter("second");
        (model.Forward(ids) - baseLogits).abs().max().item<float>().Should().BeGreaterThan(1e-2f);
        ia3.AddAdapter("third", new IA3Config());
        ia3.SetAdapter("third");
        ia3.MergeAdapter(); // vectors of ones: merge and unmerge are exact
        ia3.Invoking(p => p.DeleteAdapter("third")).Should().Throw<InvalidOperationException>().WithMessage("Unmerge adapter 'third' before deleting it.");
        ia3.UnmergeAdapter();
        ia3.DeleteAdapter("third");
        ia3.SetAdapter("second");

        ia3.DeleteAdapter("second");
        ia3.ActiveAdapter.Should().Be("default");
        ia3.PeftConfigs.Keys.Should().Equal("default");
        model.named_parameters().Select(p => p.name).Should().NotContain(n => n.Contains(".second")).And.Contain(n => n.EndsWith("ia3_l.default"));
        ia3.IA3Layers.Values.Should().OnlyContain(l => l.ActiveAdapter == "default");
        ia3.TrainableParameters().Should().HaveCount(ia3.IA3Layers.Count);
        (model.Forward(ids) - baseLogits).abs().max().item<float>().Should().BeLessThanOrEqualTo(1e-5f, "the remaining adapter starts at 1");
    }
}
