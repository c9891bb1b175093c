using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Tests.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Training;

/// <summary>
/// The chunked causal-LM loss (hidden states through the head a few positions at a time, label -100 skipped) equals
/// transformers' ForCausalLMLoss on the full logits: loss within 1e-6 relative, every LoRA gradient within 1e-6
/// relative in bfloat16 and 5e-6 in float32 (see the test), on the fixture models, with LoRA on an untied lm_head too.
/// </summary>
[Collection("TorchGlobalRng")]
public sealed class ChunkedLossTests(Xunit.Abstractions.ITestOutputHelper output)
{
    private static (double Loss, List<Tensor> Grads) LossAndGradients(string arch, ScalarType dtype, string[] targets, long? rowsPerChunk)
    {
        var model = ModelLoader.Load(Fixtures.Model(arch), new ModelLoadOptions { DType = dtype });
        var lora = PeftModel.GetPeftModel(model, new LoraConfig { R = 4, LoraAlpha = 8, InitLoraWeights = LoraInit.Random, TargetModules = targets });
        model.train();
        var inputs = FixtureLoraTests.Inputs(arch);
        var ids = FixtureLoraTests.Ids(inputs, "train_input_ids");
        var mask = FixtureLoraTests.Ids(inputs, "train_attention_mask");
        // The fixture's labels (-100 on padding) with the first three positions of each row ignored too (a prompt).
        var labels = FixtureLoraTests.Ids(inputs, "train_labels_full").clone();
        labels[.., ..3] = tensor(CausalLmLoss.IgnoreIndex);
        var (sum, count) = rowsPerChunk is null
            ? CausalLmLoss.Sum(lora.Forward(ids, mask), labels)
            : CausalLmLoss.ChunkedSum(model.ForwardHidden(model.Embed(ids), mask), labels, model.LmHead, model.Config.VocabSize,
                model.LmHeadParameters().Where(p => p.requires_grad), rowsPerChunk);
        long expected = labels[.., 1..].ne(CausalLmLoss.IgnoreIndex).sum().item<long>();
        count.Should().Be(expected, "the count is that of the shifted labels that are not -100");
        var loss = sum / count;
        loss.backward();
        var grads = lora.TrainableParameters().Select(p => p.P.grad!.detach().clone()).ToList();
        return (loss.item<float>(), grads);
    }

    [Theory]
    [InlineData("gpt2", ScalarType.Float32, "c_attn")]
    [InlineData("bloom", ScalarType.Float32, "query_key_value")]
    [InlineData("bloom", ScalarType.BFloat16, "query_key_value")]
    [InlineData("llama", ScalarType.Float32, "q_proj,v_proj")]
    [InlineData("llama", ScalarType.BFloat16, "q_proj,v_proj")]
    [InlineData("llama", ScalarType.Float32, "q_proj,v_proj,lm_head")]
    [InlineData("llama", ScalarType.BFloat16, "q_proj,v_proj,lm_head")]
    public void Chunked_loss_and_gradients_equal_the_plain_ones(string arch, ScalarType dtype, string targets)
    {
        using var scope = NewDisposeScope();
        var modules = targets.Split(',');
        var (plainLoss, plainGrads) = LossAndGradients(arch, dtype, modules, rowsPerChunk: null);
        // 3 rows per chunk: several chunks, the last one partial.
        var (loss, grads) = LossAndGradients(arch, dtype, modules, rowsPerChunk: 3);
        output.WriteLine($"{arch} {dtype} {targets}: loss {loss:R} plain {plainLoss:R}");
        Math.Abs(loss - plainLoss).Should().BeLessThanOrEqualTo(1e-6 * Math.Abs(plainLoss), $"{arch} {dtype}: chunked {loss}, plain {plainLoss}");
        int layers = ModelConfig.Load(Path.Combine(Fixtures.Model(arch), "config.json")).NumLayers;
        int blockTargets = modules.Count(m => m != "lm_head");
        grads.Should().HaveCount(2 * blockTargets * layers + (modules.Contains("lm_head") ? 2 : 0), "A and B of every target, lm_head's included");
        plainGrads.Should().HaveCount(grads.Count);
        for (int i = 0; i < grads.Count; i++)
        {
            // Relative in the 2-norm, 5e-6 in float32: the head's backward (dlogits · W, a sum over the vocabulary of
            // terms of both signs) runs over 3 rows here and over the whole batch there, in different orders; the
            // cancellation turns a few ulps into about 1.5e-6 (bfloat16 models: 1e-7, their logits are rounded).
            double scale = plainGrads[i].to(ScalarType.Float64).norm().item<double>();
            scale.Should().BeGreaterThan(0, $"gradient {i} of {arch} is not zero in the plain run");
            double err = (grads[i].to(ScalarType.Float64) - plainGrads[i].to(ScalarType.Float64)).norm().item<double>();
            output.WriteLine($"{arch} {dtype} {targets}: gradient {i} relative error {err / scale:E2}");
            err.Should().BeLessThanOrEqualTo(5e-6 * scale, $"gradient {i} of {arch} {dtype}");
        }
    }

    [Fact]
    public void Without_gradients_the_chunks_are_not_checkpointed_and_the_sum_is_the_plain_one()
    {
        using var scope = NewDisposeScope();
        var model = ModelLoader.Load(Fixtures.Model("gpt2"));
        var inputs = FixtureLoraTests.Inputs("gpt2");
        var ids = FixtureLoraTests.Ids(inputs, "train_input_ids");
        var mask = FixtureLoraTests.Ids(inputs, "train_attention_mask");
        var labels = FixtureLoraTests.Ids(inputs, "train_labels_full");
        using var _ = no_grad();
        var (plain, plainCount) = CausalLmLoss.Sum(model.Forward(ids, mask), labels);
        var (chunked, count) = model.LossSum(ids, mask, labels);
        count.Should().Be(plainCount);
        chunked.requires_grad.Should().BeFalse();
        Math.Abs(chunked.item<float>() - plain.item<float>()).Should().BeLessThanOrEqualTo(1e-6f * plain.item<float>());
    }

    [Fact]
    public void All_labels_ignored_gives_a_zero_sum_and_a_zero_count()
    {
        using var scope = NewDisposeScope();
        var hidden = randn(2, 4, 8);
        var (sum, count) = CausalLmLoss.ChunkedSum(hidden, full(2, 4, CausalLmLoss.IgnoreIndex), h => h, 8, []);
        count.Should().Be(0);
        sum.item<float>().Should().Be(0f);
    }
}
