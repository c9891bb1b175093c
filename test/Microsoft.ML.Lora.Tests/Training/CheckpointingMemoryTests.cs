using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Tests.Peft;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Training;

/// <summary>
/// Gradient checkpointing must actually drop a layer's activations after its forward: the tensors alive between the
/// forward and the backward of a checkpointed model are fewer than without checkpointing, and do not grow with the
/// number of layers' intermediate results (a checkpointed layer keeps its input and output only).
/// </summary>
[Collection("TorchGlobalRng")]
public sealed class CheckpointingMemoryTests
{
    /// <summary>Tensors left alive by one training forward (the loss not yet backpropagated).</summary>
    private static long LiveAfterForward(string arch, bool checkpointing)
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Fixtures.Model(arch));
        var lora = PeftModel.GetPeftModel(model, new LoraConfig { R = 4, LoraAlpha = 8, InitLoraWeights = LoraInit.Random, TargetModules = [LoraConfig.AllLinear] });
        if (checkpointing) model.GradientCheckpointingEnable();
        model.train();
        var inputs = FixtureLoraTests.Inputs(arch);
        var ids = FixtureLoraTests.Ids(inputs, "train_input_ids");
        var mask = FixtureLoraTests.Ids(inputs, "train_attention_mask");
        var labels = FixtureLoraTests.Ids(inputs, "train_labels_full");
        long before = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        using var forward = NewDisposeScope();
        var (sum, _) = lora.LossSum(ids, mask, labels);
        long live = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount - before;
        sum.backward();
        return live;
    }

    [Theory]
    [InlineData("gpt2")]
    [InlineData("llama")]
    public void A_checkpointed_forward_keeps_fewer_tensors_alive_than_a_plain_one(string arch)
    {
        long plain = LiveAfterForward(arch, checkpointing: false);
        long checkpointed = LiveAfterForward(arch, checkpointing: true);
        int layers = ModelConfig.Load(Path.Combine(Fixtures.Model(arch), "config.json")).NumLayers;
        // Each plain layer leaves dozens of intermediate tensors (norms, projections, LoRA branches, attention);
        // a checkpointed one leaves its output. Half the plain count is a wide margin for what is outside the layers.
        checkpointed.Should().BeLessThan(plain / 2, $"{layers} checkpointed layers keep no intermediate tensors (plain forward: {plain} alive)");
    }
}
