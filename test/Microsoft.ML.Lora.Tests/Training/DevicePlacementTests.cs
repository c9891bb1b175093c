using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Tests.Peft;
using Microsoft.ML.Lora.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Training;

/// <summary>
/// Batches, masks, labels and generation inputs go to the model's device. No CUDA runtime is available here, so the
/// model lives on the meta device (shapes only): <see cref="CausalLm.Forward"/> accepts only inputs on the model's
/// device, and the loss only labels on the logits' device. A flow that keeps everything there gets through the
/// forward pass and the loss and fails only where a number must be read back (libtorch's "meta" error).
/// </summary>
public sealed class DevicePlacementTests
{
#pragma warning disable IDE1006 // a LoRA target's Hugging Face name
    /// <summary>A causal LM on the meta device whose logits are one LoRA-able projection broadcast over the vocabulary.</summary>
    private sealed class MetaProbe : CausalLm
    {
        private readonly ModelConfig _config = TinyLm.MakeConfig();
        internal nn.Module<Tensor, Tensor> c_attn;
        public int Calls;

        public MetaProbe() : base(nameof(MetaProbe))
        {
            c_attn = EmptyWeights.Create(() => new Linear(_config.HiddenSize, _config.HiddenSize));
            RegisterComponents();
        }

        public override ModelConfig Config => _config;

        public override Tensor Embed(Tensor inputIds) =>
            zeros([inputIds.shape[0], inputIds.shape[1], _config.HiddenSize], device: inputIds.device);

        internal override Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, KvCache? cache = null)
        {
            Calls++;
            return c_attn.forward(inputsEmbeds).narrow(-1, 0, 1); // (batch, time, 1)
        }

        internal override Tensor LmHead(Tensor hiddenStates) => hiddenStates + zeros([_config.VocabSize], device: hiddenStates.device);
    }
#pragma warning restore IDE1006

    private static readonly TrainingExample Example = new([5, 6, 7], [8, 9]);

    /// <summary><paramref name="act"/> must get past the model's entry and the loss, failing only to read a meta tensor's data.</summary>
    private static void FailsOnlyReadingMetaData(MetaProbe probe, Action act)
    {
        int before = probe.Calls;
        var e = act.Should().Throw<Exception>().Which;
        e.Message.Should().NotContain("but the model is on", "every input reached the model on its device");
        e.Message.Should().NotContain("but the logits on", "the labels were built on the model's device");
        e.Message.Should().NotContain("but the hidden states on", "the labels were built on the model's device");
        e.Message.Should().ContainEquivalentOf("meta");
        probe.Calls.Should().BeGreaterThan(before);
    }

    [Fact]
    public void Forward_names_an_input_on_another_device()
    {
        using var scope = NewDisposeScope();
        using var model = EmptyWeights.Create(() => ModelFactory.Create(ModelConfig.Load(Path.Combine(Fixtures.Model("gpt2"), "config.json"))));
        var ids = tensor(new long[] { 1, 2, 3 }, [1, 3]);
        var act = () => model.Forward(ids.to(model.Device), ones(1, 3, ScalarType.Int64));
        act.Should().Throw<InvalidOperationException>().WithMessage("attention_mask is on cpu but the model is on meta*");
        act = () => model.Forward(ids);
        act.Should().Throw<InvalidOperationException>().WithMessage("input_ids is on cpu but the model is on meta*");
    }

    [Fact]
    public void Loss_names_labels_on_another_device()
    {
        using var scope = NewDisposeScope();
        var act = () => CausalLmLoss.Sum(empty(1, 3, 10, device: EmptyWeights.Meta), zeros(1, 3, ScalarType.Int64));
        act.Should().Throw<InvalidOperationException>().WithMessage("The labels are on cpu but the logits on meta*");
        act = () => CausalLmLoss.ChunkedSum(empty(1, 3, 4, device: EmptyWeights.Meta), zeros(1, 3, ScalarType.Int64), h => h, 10, []);
        act.Should().Throw<InvalidOperationException>().WithMessage("The labels are on cpu but the hidden states on meta*");
    }

    [Fact]
    public void Trainer_builds_batches_and_labels_on_the_model_device()
    {
        using var scope = NewDisposeScope();
        var probe = new MetaProbe();
        var lora = PeftModel.GetPeftModel(probe, new LoraConfig { R = 2, TargetModules = ["c_attn"] });
        using var trainer = new Trainer(lora, new TrainingOptions { MaxSteps = 1, BatchSize = 1 });
        // (Train itself first checks every trainable weight is finite, which reads meta data before any forward.)
        var collator = new Collator(0, 2, true, false, 64, OverlengthPolicy.Truncate);
        FailsOnlyReadingMetaData(probe, () =>
        {
            using var batch = collator.Collate([collator.Encode(Example, 0)], probe.Device);
            trainer.Backward([batch]);
        });
        FailsOnlyReadingMetaData(probe, () => trainer.Evaluate([collator.Encode(Example, 0)], collator));
    }

    [Fact]
    public void Generator_puts_prompts_and_masks_on_the_model_device()
    {
        using var scope = NewDisposeScope();
        using var probe = new MetaProbe();
        var generator = new Lora.Generation.Generator(probe);
        FailsOnlyReadingMetaData(probe, () => generator.Generate([5, 6, 7]));
        FailsOnlyReadingMetaData(probe, () => generator.Generate(tensor(new long[] { 5, 6, 7 }, [1, 3]), null));
    }
}
