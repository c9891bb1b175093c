using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;
using Generator = Microsoft.ML.Lora.Generation.Generator;

namespace Microsoft.ML.Lora.Tests.PeftMethods;

/// <summary>LoRA on embed_tokens and on an untied lm_head against shared/fixtures/peft/lora_embedding and lora_lm_head (PEFT 0.18).</summary>
public class LoraEmbeddingAndHeadTests(ITestOutputHelper output)
{
    private static LoraConfig ConfigOf(string method) =>
        new() { R = 8, LoraAlpha = 16, TargetModules = ["q_proj", "v_proj", method == "lora_embedding" ? "embed_tokens" : "lm_head"] };

    /// <summary>PEFT's in-memory name of one of our trainable parameters.</summary>
    private static string PeftName(string name) => $"base_model.model.{name}";

    [Theory]
    [InlineData("lora_embedding")]
    [InlineData("lora_lm_head")]
    public void Applied_model_has_peft_parameters_keys_and_equals_the_base_at_init(string method)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, "llama");
        var model = ModelLoader.Load(Fixtures.Model("llama"));
        model.eval();
        var lm = PeftModel.GetPeftModel(model, ConfigOf(method));
        lm.TrainableReport().Should().Be(f.Meta["print_trainable_parameters"]!.GetValue<string>());
        lm.TrainableParameters().Select(p => PeftName(p.Name)).Should().BeEquivalentTo(
            f.Meta["trainable_parameter_names_in_memory"]!.AsArray().Select(x => x!.GetValue<string>()));
        lm.StateDict().ToDictionary(kv => kv.Key, kv => string.Join(",", kv.Value.shape))
            .Should().BeEquivalentTo(f.Meta["adapter_keys"]!.AsObject().ToDictionary(kv => kv.Key, kv => string.Join(",", kv.Value!.AsArray().Select(x => x!.GetValue<long>()))));
        if (method == "lora_embedding")
        {
            var e = lm.Embeddings["model.embed_tokens"];
            e.LoraA("default").abs().max().item<float>().Should().Be(0, "PEFT's embedding LoRA starts with A = 0");
            e.LoraB("default").std().item<float>().Should().BeInRange(0.9f, 1.1f, "B ~ N(0, 1)");
        }
        var ids = f.Load("logits_input_ids"); var mask = f.Load("logits_attention_mask");
        using var _ = no_grad();
        MethodFixture.MaxErr(model.Forward(ids, mask, DoraTests.Positions(ids)), f.Load("logits_init"), mask).Should().BeLessThanOrEqualTo(1e-4);
    }

    [Theory]
    [InlineData("lora_embedding")]
    [InlineData("lora_lm_head")]
    public void Three_adamw_steps_from_peft_init_reproduce_gradients_losses_and_trained_weights(string method)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, "llama");
        var lm = PeftAdapterIO.Load(ModelLoader.Load(Fixtures.Model("llama")), f.AdapterInit);
        float padColumnGrad = float.NaN;
        var r = f.Train(lm, afterBackward: () =>
        {
            if (method == "lora_embedding") // padding_idx = pad id 0: that column of A gets no gradient
                padColumnGrad = lm.Embeddings["model.embed_tokens"].LoraA("default").grad![.., 0].abs().max().item<float>();
        });
        output.WriteLine(r.ToString());
        if (method == "lora_embedding") padColumnGrad.Should().Be(0);
        r.GradErr.Should().BeLessThanOrEqualTo(1e-4);
        r.LossErr.Should().BeLessThanOrEqualTo(1e-5);
        r.ParamErr.Should().BeLessThanOrEqualTo(1e-5);
    }

    [Theory]
    [InlineData("lora_embedding")]
    [InlineData("lora_lm_head")]
    public void Trained_adapter_gives_peft_logits_merged_logits_and_generation(string method)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, "llama");
        var model = ModelLoader.Load(Fixtures.Model("llama"));
        model.eval();
        var lm = PeftAdapterIO.Load(model, f.Adapter);
        var ids = f.Load("logits_input_ids"); var mask = f.Load("logits_attention_mask");
        using var _ = no_grad();
        var adapted = model.Forward(ids, mask, DoraTests.Positions(ids));
        double trained = MethodFixture.MaxErr(adapted, f.Load("logits_trained"), mask);
        var generated = new Generator(model).Generate([.. f.Load("gen_prompt_ids").data<long>().Select(x => (int)x)], new GenerationOptions { MaxNewTokens = 8, EosTokenIds = [] });
        lm.MergeAdapter();
        double merged = MethodFixture.MaxErr(model.Forward(ids, mask, DoraTests.Positions(ids)), f.Load("logits_merged"), mask);
        lm.UnmergeAdapter();
        double unmerged = MethodFixture.MaxErr(model.Forward(ids, mask, DoraTests.Positions(ids)), adapted, mask);
        var unloaded = lm.MergeAndUnload();
        double unloadedErr = MethodFixture.MaxErr(unloaded.Forward(ids, mask, DoraTests.Positions(ids)), f.Load("logits_merged"), mask);
        output.WriteLine($"{method} llama: trained {trained:E2}, merged {merged:E2}, after unmerge {unmerged:E2}, merge_and_unload {unloadedErr:E2}");
        trained.Should().BeLessThanOrEqualTo(1e-4);
        merged.Should().BeLessThanOrEqualTo(1e-4);
        unmerged.Should().BeLessThanOrEqualTo(1e-4);
        unloadedErr.Should().BeLessThanOrEqualTo(1e-4);
        unloaded.named_parameters().Select(p => p.name).Should().NotContain(n => n.Contains("lora_") || n.Contains("base_layer"));
        generated.Select(x => (long)x).Should().Equal(f.Greedy()[6..]);
    }

    [Theory]
    [InlineData("lora_embedding")]
    [InlineData("lora_lm_head")]
    public void Saved_adapter_has_peft_keys_and_bytes_including_the_full_base_matrix(string method)
    {
        using var scope = NewDisposeScope();
        using var f = new MethodFixture(method, "llama");
        var lm = PeftAdapterIO.Load(ModelLoader.Load(Fixtures.Model("llama")), f.Adapter);
        using var temp = new TempFolder();
        PeftAdapterIO.Save(lm, temp.Path);
        MethodFixture.ShouldHoldTheSameTensors(temp.Path, f.Adapter);
        ((LoraConfig)PeftAdapterIO.ReadConfig(temp.Path)).TargetModules.Should().BeEquivalentTo(((LoraConfig)PeftAdapterIO.ReadConfig(f.Adapter)).TargetModules);
    }
}
