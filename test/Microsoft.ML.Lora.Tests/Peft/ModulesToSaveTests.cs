using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Peft;

[Collection("TorchGlobalRng")]
public class ModulesToSaveTests
{
    private static readonly LoraConfig Config = new() { R = 8, LoraAlpha = 16, InitLoraWeights = LoraInit.Random, ModulesToSave = ["lm_head"] };
    private static Tensor Ids => tensor(new long[] { 3, 9, 17, 40, 5, 22 }).view(1, 6);

    // TinyLm (hidden 32, 2 blocks, vocab 64) by hand: wte 64·32; per block c_attn 32·96+96, c_proj 32·32+32,
    // c_fc 32·128+128, c_proj 128·32+32; ln_f 2·32; lm_head 32·64. LoRA r=8 on both c_attn: 2·8·(32+96).
    private const long Base = 64 * 32 + 2 * ((32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)) + 2 * 32 + 32 * 64;
    private const long Lora = 2 * 8 * (32 + 96);
    private const long Head = 32 * 64;

    [Fact]
    public void Wraps_like_peft_and_counts_original_and_copy()
    {
        using var scope = NewDisposeScope();
        var plain = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), Config with { ModulesToSave = null });
        plain.Model.named_parameters().Select(p => p.name).Should().Contain("lm_head.weight").And.NotContain(n => n.Contains("original_module"));

        var lm = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), Config);
        var names = lm.Model.named_parameters().Select(p => p.name).ToList();
        names.Should().Contain(["lm_head.original_module.weight", "lm_head.modules_to_save.default.weight"]).And.NotContain("lm_head.weight");
        lm.GetNbTrainableParameters().Should().Be((Lora + Head, Base + Lora + Head));
        lm.TrainableParameters().Select(p => p.Name).Should().Contain("lm_head.modules_to_save.default.weight").And.NotContain("lm_head.original_module.weight");
        var w = lm.SavedModules["lm_head"];
        w.Copy("default").parameters().Single().Handle.Should().NotBe(w.OriginalModule.parameters().Single().Handle);

        lm.StateDict().Keys.Should().Equal(
            "base_model.model.lm_head.weight",
            "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight", "base_model.model.transformer.h.0.attn.c_attn.lora_B.weight",
            "base_model.model.transformer.h.1.attn.c_attn.lora_A.weight", "base_model.model.transformer.h.1.attn.c_attn.lora_B.weight");
        ReferenceEquals(lm.StateDict()["base_model.model.lm_head.weight"], w.Copy("default").parameters().Single()).Should().BeTrue();
    }

    [Fact]
    public void Copy_trains_original_stays_and_disabling_gives_the_original()
    {
        using var scope = NewDisposeScope();
        var reference = new TinyLm(TinyLm.MakeConfig());
        using var refLogits = reference.Forward(Ids).detach();
        var lm = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), Config);
        var w = lm.SavedModules["lm_head"];
        using var original = w.OriginalModule.parameters().Single().detach().clone();

        var opt = optim.SGD(lm.TrainableParameters().Select(p => p.P), 0.1);
        using (var loss = lm.Model.Forward(Ids).pow(2).mean()) loss.backward();
        opt.step();

        w.OriginalModule.parameters().Single().allclose(original, 0, 0).Should().BeTrue();
        w.Copy("default").parameters().Single().allclose(original, 0, 0).Should().BeFalse();
        using (lm.DisableAdapter())
        using (var disabled = lm.Model.Forward(Ids)) disabled.allclose(refLogits, 0, 0).Should().BeTrue();
        using var enabled = lm.Model.Forward(Ids);
        enabled.allclose(refLogits, 0, 0).Should().BeFalse();
    }

    [Fact]
    public void Save_load_into_a_fresh_model_reproduces_logits()
    {
        using var scope = NewDisposeScope();
        using var temp = new TempFolder();
        var lm = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), Config);
        using (no_grad()) lm.SavedModules["lm_head"].Copy("default").parameters().Single().add_(0.5);
        using var logits = lm.Model.Forward(Ids);
        PeftAdapterIO.Save(lm, temp.Path);

        var loaded = PeftAdapterIO.Load(new TinyLm(TinyLm.MakeConfig()), temp.Path);
        loaded.SavedModules.Keys.Should().Equal("lm_head");
        using var again = loaded.Model.Forward(Ids);
        again.allclose(logits, 0, 0).Should().BeTrue();
    }

    [Fact]
    public void Merge_and_unmerge_of_lora_are_unaffected()
    {
        using var scope = NewDisposeScope();
        var lm = PeftModel.GetPeftModel(new TinyLm(TinyLm.MakeConfig()), Config);
        using (no_grad()) lm.SavedModules["lm_head"].Copy("default").parameters().Single().add_(0.5);
        using var logits = lm.Model.Forward(Ids);
        var c = lm.Layers["transformer.h.0.attn.c_attn"];
        using var before = c.weight.detach().clone();
        lm.MergeAdapter();
        using (var merged = lm.Model.Forward(Ids)) merged.allclose(logits, rtol: 1e-5, atol: 1e-5).Should().BeTrue();
        c.weight.allclose(before, 0, 0).Should().BeFalse();
        lm.UnmergeAdapter();
        c.weight.allclose(before, rtol: 0, atol: 1e-6).Should().BeTrue();
        var unloaded = lm.MergeAndUnload();
        using var final = unloaded.Forward(Ids);
        final.allclose(logits, rtol: 1e-5, atol: 1e-5).Should().BeTrue();
        unloaded.named_parameters().Select(p => p.name).Should().Contain("lm_head.weight").And.NotContain(n => n.Contains("modules_to_save"));
    }

    [Fact]
    public void A_tied_lm_head_that_is_no_module_is_reported()
    {
        using var scope = NewDisposeScope();
        var gpt2 = new Gpt2ForCausalLm(TinyLm.MakeConfig());
        var act = () => PeftModel.GetPeftModel(gpt2, Config with { TargetModules = ["c_attn"] });
        act.Should().Throw<ArgumentException>().WithMessage("*modules_to_save [lm_head] matches no module*tied lm_head*");
    }
}
