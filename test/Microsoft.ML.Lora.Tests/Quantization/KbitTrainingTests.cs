using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Quantization;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Quantization;

/// <summary>
/// PEFT's prepare_model_for_kbit_training on the pre-quantized tiny LLaMA of shared/fixtures/quant/llama-nf4 loaded in
/// bfloat16: every parameter frozen, the norms' weights cast to float32 (the rest left in its dtype, see
/// <see cref="KbitTraining"/>), the input embeddings' output requiring grad in training, gradient checkpointing on;
/// the quantized layers untouched and the logits unchanged; LoRA then trains through the quantized layers.
/// </summary>
[Collection("TorchGlobalRng")] // counts GradientCheckpoint.Recomputations, as GradientCheckpointingTests do
public sealed class KbitTrainingTests
{
    private static string Nf4Folder => Path.Combine(Fixtures.Root, "quant", "llama-nf4");

    private static Tensor Ids() => tensor(new long[] { 1, 5, 9, 200, 31, 7, 64, 2 }, [2, 4]);

    [Fact]
    public void Prepare_freezes_casts_the_norms_to_float32_and_enables_checkpointing_with_input_grads()
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Nf4Folder, new ModelLoadOptions { DType = ScalarType.BFloat16 });
        var norms = model.named_modules().Where(m => m.module is RmsNorm).Select(m => m.name).ToList();
        norms.Should().HaveCount(5, "two per layer and the final norm");
        model.named_parameters().Where(p => norms.Any(n => p.name.StartsWith(n + ".", StringComparison.Ordinal)))
            .Should().OnlyContain(p => p.parameter.dtype == ScalarType.BFloat16, "loaded in bfloat16");
        model.train();
        using (var e = model.Embed(Ids())) e.requires_grad.Should().BeFalse("a frozen embedding's output needs no grad before preparing");
        foreach (var p in model.parameters()) if (p.is_floating_point()) p.requires_grad = true; // so that freezing has something to do
        Tensor before;
        using (no_grad()) before = model.Forward(Ids());
        var dtypes = model.named_parameters().ToDictionary(p => p.name, p => p.parameter.dtype);
        dtypes.Values.Should().Contain(ScalarType.Byte, "the 4-bit weights are packed bytes");
        var quantizedBefore = model.named_modules().Where(m => m.module is Linear4bit).Select(m => m.name).ToList();

        KbitTraining.PrepareModelForKbitTraining(model).Should().BeSameAs(model);

        model.parameters().Should().OnlyContain(p => !p.requires_grad, "every parameter of the base is frozen");
        foreach (var (name, p) in model.named_parameters())
        {
            bool isNorm = norms.Any(n => name.StartsWith(n + ".", StringComparison.Ordinal));
            p.dtype.Should().Be(isNorm ? ScalarType.Float32 : dtypes[name], $"{name}: norms in float32; the embedding, lm_head and the packed 4-bit weights kept");
        }
        model.named_modules().Where(m => m.module is Linear4bit).Select(m => m.name).Should().Equal(quantizedBefore, "the 4-bit layers stay as they are");
        model.IsGradientCheckpointing.Should().BeTrue();
        using (var e = model.Embed(Ids())) e.requires_grad.Should().BeTrue("enable_input_require_grads: the embeddings' output requires grad in training");
        using (no_grad())
        using (var e = model.Embed(Ids())) e.requires_grad.Should().BeFalse("never under no_grad");
        model.eval();
        using (no_grad())
        using (var after = model.Forward(Ids()))
            after.allclose(before, 0, 0).Should().BeTrue("the norms compute in float32 anyway: casting their bfloat16 weights changes no logit");
    }

    [Fact]
    public void Without_gradient_checkpointing_only_freezing_and_the_casts_apply()
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Nf4Folder, new ModelLoadOptions { DType = ScalarType.BFloat16 });
        KbitTraining.PrepareModelForKbitTraining(model, useGradientCheckpointing: false);
        model.IsGradientCheckpointing.Should().BeFalse();
        model.train();
        using (var e = model.Embed(Ids())) e.requires_grad.Should().BeFalse();
        model.named_modules().Where(m => m.module is RmsNorm).SelectMany(m => m.module.parameters())
            .Should().OnlyContain(p => p.dtype == ScalarType.Float32);
    }

    [Fact]
    public void Lora_on_the_prepared_quantized_model_gets_gradients_through_checkpointed_4bit_layers()
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Nf4Folder, new ModelLoadOptions { DType = ScalarType.BFloat16 });
        KbitTraining.PrepareModelForKbitTraining(model);
        var lora = PeftModel.GetPeftModel(model, new LoraConfig { R = 4, LoraAlpha = 8, InitLoraWeights = LoraInit.Random, TargetModules = ["q_proj", "v_proj"] });
        model.train();
        int recomputed = GradientCheckpoint.Recomputations;
        var ids = Ids();
        var (sum, count) = lora.LossSum(ids, null, ids);
        (sum / count).backward();
        (GradientCheckpoint.Recomputations - recomputed).Should().Be(model.Config.NumLayers, "each decoder layer ran again in backward");
        var trainable = lora.TrainableParameters();
        trainable.Should().HaveCount(2 * 2 * model.Config.NumLayers);
        foreach (var (name, p) in trainable)
        {
            p.grad.Should().NotBeNull(name);
            p.grad!.abs().max().item<float>().Should().BeGreaterThan(0, $"{name} gets a gradient through the 4-bit layers");
        }
        var own = trainable.Select(t => t.P.Handle).ToHashSet();
        model.named_parameters().Where(p => !own.Contains(p.parameter.Handle) && p.parameter.grad is not null).Select(p => p.name)
            .Should().BeEmpty("the frozen base, quantized layers included, gets no gradient");
    }
}
