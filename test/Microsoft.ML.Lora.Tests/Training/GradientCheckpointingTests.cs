using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Tests.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Training;

/// <summary>
/// Gradient checkpointing (transformers' gradient_checkpointing_enable) recomputes each decoder layer in backward with
/// the same dropout masks: the loss and every LoRA gradient equal those of the run without it (1e-6 relative).
/// </summary>
[Collection("TorchGlobalRng")]
public sealed class GradientCheckpointingTests
{
    private static (double Loss, List<Tensor> Grads) LossAndGradients(string arch, bool checkpointing, ScalarType dtype)
    {
        manual_seed(7);
        var model = ModelLoader.Load(Fixtures.Model(arch), new ModelLoadOptions { DType = dtype });
        var lora = PeftModel.GetPeftModel(model, new LoraConfig
        {
            R = 4, LoraAlpha = 8, LoraDropout = 0.2, InitLoraWeights = LoraInit.Random, TargetModules = [LoraConfig.AllLinear],
        });
        using var trainer = new Trainer(lora, new TrainingOptions { GradientCheckpointing = checkpointing, Seed = 3 });
        model.IsGradientCheckpointing.Should().Be(checkpointing);
        var inputs = FixtureLoraTests.Inputs(arch);
        using var batch = new Batch(FixtureLoraTests.Ids(inputs, "train_input_ids"), FixtureLoraTests.Ids(inputs, "train_attention_mask"),
            FixtureLoraTests.Ids(inputs, "train_labels_full"), 0);
        double loss = trainer.Backward([batch]);
        return (loss, lora.TrainableParameters().Select(p => p.P.grad!.detach().clone()).ToList());
    }

    [Theory]
    [InlineData("gpt2", ScalarType.Float32)]
    [InlineData("bloom", ScalarType.Float32)]
    [InlineData("llama", ScalarType.Float32)]
    [InlineData("llama", ScalarType.BFloat16)]
    public void Losses_and_gradients_equal_those_without_checkpointing(string arch, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var (plainLoss, plainGrads) = LossAndGradients(arch, checkpointing: false, dtype);
        int before = GradientCheckpoint.Recomputations;
        var (loss, grads) = LossAndGradients(arch, checkpointing: true, dtype);
        int layers = ModelConfig.Load(Path.Combine(Fixtures.Model(arch), "config.json")).NumLayers;
        (GradientCheckpoint.Recomputations - before).Should().Be(layers, "each decoder layer ran again in backward");
        Math.Abs(loss - plainLoss).Should().BeLessThanOrEqualTo(1e-6 * Math.Abs(plainLoss));
        grads.Should().HaveCount(plainGrads.Count);
        for (int i = 0; i < grads.Count; i++)
        {
            double scale = plainGrads[i].abs().max().item<float>();
            scale.Should().BeGreaterThan(0);
            double err = (grads[i] - plainGrads[i]).abs().max().item<float>();
            err.Should().BeLessThanOrEqualTo(1e-6 * scale, $"gradient {i} of {arch}");
        }
    }

    [Fact]
    public void Evaluation_and_generation_do_not_checkpoint()
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Fixtures.Model("gpt2"));
        model.GradientCheckpointingEnable();
        int before = GradientCheckpoint.Recomputations;
        model.eval();
        var ids = Microsoft.ML.Lora.Tests.Models.ModelFixtureTests.Ref("gpt2", "logits_input_ids");
        using (no_grad()) model.Forward(ids);
        model.GradientCheckpointingDisable();
        model.IsGradientCheckpointing.Should().BeFalse();
        GradientCheckpoint.Recomputations.Should().Be(before);
    }
}
