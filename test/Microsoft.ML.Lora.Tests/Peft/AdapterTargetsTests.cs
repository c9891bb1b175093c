using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Peft;

/// <summary>
/// Adapters of one model with different targets (PEFT's add_adapter / load_adapter run inject_adapter for each): an
/// adapter adapts exactly its own targets, whatever the earlier adapters wrapped, and the active adapter does not
/// change when another is added. Compared with a model that holds only that adapter (same seeded initialisation).
/// Before, a later adapter was added to the first adapter's layers and never to its own targets.
/// </summary>
[Collection("TorchGlobalRng")]
public class AdapterTargetsTests
{
    private static readonly LoraConfig OnQuery = new() { R = 4, LoraAlpha = 8, TargetModules = ["q_proj"], InitLoraWeights = LoraInit.Random };
    private static readonly LoraConfig OnValue = new() { R = 2, LoraAlpha = 4, TargetModules = ["v_proj", "down_proj"], InitLoraWeights = LoraInit.Random };

    private static Tensor Ids() => tensor(new long[,] { { 1, 17, 42, 5, 99, 3, 64, 8 } });

    private static float[] Logits(PeftModel model)
    {
        using var _ = no_grad();
        using var logits = model.Forward(Ids());
        return logits.data<float>().ToArray();
    }

    private static void SameLogits(PeftModel actual, PeftModel expected, string what)
    {
        var (a, e) = (Logits(actual), Logits(expected));
        a.Zip(e, (x, y) => Math.Abs(x - y)).Max().Should().BeLessThan(1e-6f, what);
    }

    private static (string[] Keys, JsonObject Config, Dictionary<string, float[]> Values) Saved(PeftModel model, string adapter)
    {
        using var folder = new TempFolder();
        model.SavePretrained(folder.Path, [adapter]);
        string dir = adapter == "default" ? folder.Path : Path.Combine(folder.Path, adapter);
        using var file = Lora.Checkpoints.SafeTensorsFile.Open(Path.Combine(dir, "adapter_model.safetensors"));
        var values = file.Tensors.ToDictionary(t => t.Name, t => { using Tensor x = file.Load(t.Name, ScalarType.Float32); return x.data<float>().ToArray(); });
        return ([.. file.Tensors.Select(t => t.Name).Order(StringComparer.Ordinal)], JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "adapter_config.json")))!.AsObject(), values);
    }

    [Fact]
    public void Lora_adapter_added_later_adapts_its_own_targets_only()
    {
        using var scope = NewDisposeScope();
        var both = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("llama")), OnQuery, "a");
        both.AddAdapter("b", OnValue);
        var onlyA = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("llama")), OnQuery, "a");
        var onlyB = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("llama")), OnValue, "b");

        both.ActiveAdapter.Should().Be("a");
        SameLogits(both, onlyA, "adding b leaves a active, and b's new layers off");
        both.SetAdapter("b");
        SameLogits(both, onlyB, "b adapts v_proj and down_proj, never a's q_proj");
        both.TrainableParameters().Select(p => p.Name).Should().Equal(onlyB.TrainableParameters().Select(p => p.Name));
        both.GetNbTrainableParameters().Trainable.Should().Be(onlyB.GetNbTrainableParameters().Trainable);

        var (keys, config, values) = Saved(both, "b");
        var (expectedKeys, expectedConfig, expectedValues) = Saved(onlyB, "b");
        keys.Should().Equal(expectedKeys);
        keys.Should().OnlyContain(k => k.Contains("v_proj") || k.Contains("down_proj"));
        foreach (var k in keys) values[k].Should().Equal(expectedValues[k], k);
        config["target_modules"]!.ToJsonString().Should().Be(expectedConfig["target_modules"]!.ToJsonString());
        Saved(both, "a").Keys.Should().Equal(Saved(onlyA, "a").Keys);

        both.DeleteAdapter("b");
        both.ActiveAdapter.Should().Be("a");
        SameLogits(both, onlyA, "deleting b leaves a as it was");
    }

    [Fact]
    public void Loaded_adapter_with_other_targets_adapts_its_own_targets()
    {
        using var scope = NewDisposeScope();
        using var folder = new TempFolder();
        var onlyB = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("llama")), OnValue, "b");
        onlyB.SavePretrained(folder.Path, ["b"]);
        var both = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("llama")), OnQuery, "a");
        both.LoadAdapter(Path.Combine(folder.Path, "b"), "b");
        both.ActiveAdapter.Should().Be("a", "loading an adapter does not activate it");
        both.SetAdapter("b");
        SameLogits(both, onlyB, "the loaded b adapts v_proj and down_proj with its saved weights");
    }

    [Fact]
    public void Wrapping_keeps_the_order_of_the_modules()
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Fixtures.Model("llama"));
        var before = model.named_modules().Select(m => m.name).Where(n => n.StartsWith("model.layers.0.", StringComparison.Ordinal) && n.Count(c => c == '.') == 4).ToList();
        var peft = PeftModel.GetPeftModel(model, new LoraConfig { R = 2, TargetModules = ["q_proj", "v_proj"] });
        var after = model.named_modules().Select(m => m.name).Where(n => n.StartsWith("model.layers.0.", StringComparison.Ordinal) && n.Count(c => c == '.') == 4).ToList();
        after.Should().Equal(before, "PEFT replaces a module with setattr, which keeps its place among its siblings");
        before.Should().ContainInOrder("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj");
    }

    [Fact]
    public void All_linear_adapter_added_later_also_adapts_layers_an_earlier_adapter_wrapped()
    {
        using var scope = NewDisposeScope();
        var allLinear = OnValue with { TargetModules = [LoraConfig.AllLinear] };
        var both = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("llama")), OnQuery, "a");
        both.AddAdapter("b", allLinear);
        both.SetAdapter("b");
        var onlyB = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("llama")), allLinear, "b");
        var (keys, _, values) = Saved(both, "b");
        var (expectedKeys, _, expectedValues) = Saved(onlyB, "b");
        keys.Should().Equal(expectedKeys).And.Contain(k => k.Contains("q_proj"));
        foreach (var k in keys) values[k].Should().Equal(expectedValues[k], k);
        SameLogits(both, onlyB, "all-linear b on every linear, q_proj included");
        using var merged = both.MergeAndUnload();
        using var expected = onlyB.MergeAndUnload();
        using var _ = no_grad();
        using var a = merged.Forward(Ids());
        using var e = expected.Forward(Ids());
        (a - e).abs().max().item<float>().Should().BeLessThan(1e-5f, "merging b touches its own targets only");
    }

    [Fact]
    public void Ia3_adapter_added_later_adapts_its_own_targets_only()
    {
        using var scope = NewDisposeScope();
        var first = new IA3Config { TargetModules = ["k_proj"], FeedforwardModules = [], InitIA3Weights = false };
        var second = new IA3Config { TargetModules = ["v_proj", "down_proj"], FeedforwardModules = ["down_proj"], InitIA3Weights = false };
        var both = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("llama")), first, "a");
        both.AddAdapter("b", second);
        var onlyA = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("llama")), first, "a");
        var onlyB = PeftModel.GetPeftModel(ModelLoader.Load(Fixtures.Model("llama")), second, "b");
        SameLogits(both, onlyA, "adding b leaves a active");
        both.SetAdapter("b");
        SameLogits(both, onlyB, "b scales v_proj and down_proj only");
        Saved(both, "b").Keys.Should().Equal(Saved(onlyB, "b").Keys);
    }
}
