using Microsoft.ML.Lora.Models.Layers;
using Microsoft.ML.Lora.Peft;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Peft;

[Collection("TorchGlobalRng")]
public class LoraLinearTests
{
    private static LoraLinear Make(bool conv, LoraInit init = LoraInit.Random, int r = 4, double alpha = 8)
    {
        manual_seed(7);
        TorchSharp.torch.nn.Module<Tensor, Tensor> b = conv ? new Conv1D(16, 24) : new Linear(16, 24);
        var l = new LoraLinear(b);
        l.AddAdapter("default", new LoraConfig { R = r, LoraAlpha = alpha, InitLoraWeights = init, FanInFanOut = conv });
        return l;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Forward_is_base_plus_scaled_BA_and_merge_matches(bool conv)
    {
        using var scope = NewDisposeScope();
        var l = Make(conv);
        var x = randn(3, 5, 16);
        using var baseOut = l.BaseLayer.forward(x);
        var expected = baseOut + matmul(matmul(x, l.LoraA("default").t()), l.LoraB("default").t()) * 2.0;
        var y = l.forward(x);
        (y - expected).abs().max().item<float>().Should().BeLessThan(1e-5f);
        (y - baseOut).abs().max().item<float>().Should().BeGreaterThan(1e-3f);

        var w0 = l.weight.detach().clone();
        l.Merge();
        l.MergedAdapters.Should().Equal("default");
        (l.forward(x) - y).abs().max().item<float>().Should().BeLessThan(1e-5f);
        l.Unmerge();
        (l.weight - w0).abs().max().item<float>().Should().BeLessThan(1e-6f);
        (l.forward(x) - y).abs().max().item<float>().Should().BeLessThan(1e-5f);
    }

    [Fact]
    public void Default_init_is_a_no_op_with_kaiming_A_and_zero_B()
    {
        using var scope = NewDisposeScope();
        var l = Make(false, LoraInit.Default, r: 8);
        var x = randn(2, 16);
        (l.forward(x) - l.BaseLayer.forward(x)).abs().max().item<float>().Should().Be(0f);
        l.LoraB("default").abs().sum().item<float>().Should().Be(0f);
        // kaiming_uniform(a=sqrt(5)) on [8, 16]: bound = 1/sqrt(16) = 0.25
        l.LoraA("default").abs().max().item<float>().Should().BeLessThanOrEqualTo(0.25f).And.BeGreaterThan(0.2f);
        l.LoraA("default").shape.Should().Equal(8, 16);
        l.LoraB("default").shape.Should().Equal(24, 8);
    }

    [Fact]
    public void Gaussian_init_has_std_one_over_r()
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var l = new LoraLinear(new Linear(4096, 8));
        l.AddAdapter("g", new LoraConfig { R = 4, InitLoraWeights = LoraInit.Gaussian });
        l.LoraA("g").std().item<float>().Should().BeApproximately(0.25f, 0.005f);
        l.LoraB("g").abs().sum().item<float>().Should().Be(0f);
    }

    [Fact]
    public void State_dict_names_follow_peft_and_base_is_frozen()
    {
        using var scope = NewDisposeScope();
        var l = Make(false);
        var ps = l.named_parameters().ToList();
        ps.Where(p => p.name.StartsWith("lora_")).Select(p => (p.name, p.parameter.requires_grad)).Should().Equal(("lora_A.default.weight", true), ("lora_B.default.weight", true));
        ps.Where(p => p.name.StartsWith("base_layer.")).Should().HaveCount(2).And.OnlyContain(p => !p.parameter.requires_grad);
    }

    [Fact]
    public void Disable_and_switch_between_named_adapters()
    {
        using var scope = NewDisposeScope();
        var l = Make(false);
        l.AddAdapter("other", new LoraConfig { R = 2, LoraAlpha = 2, InitLoraWeights = LoraInit.Random });
        var x = randn(2, 16);
        var baseOut = l.BaseLayer.forward(x);
        var a = l.forward(x);
        l.AdaptersDisabled = true;
        (l.forward(x) - baseOut).abs().max().item<float>().Should().Be(0f);
        l.AdaptersDisabled = false;
        l.ActiveAdapter = "other";
        var b = l.forward(x);
        var expected = baseOut + matmul(matmul(x, l.LoraA("other").t()), l.LoraB("other").t());
        (b - expected).abs().max().item<float>().Should().BeLessThan(1e-5f);
        (b - a).abs().max().item<float>().Should().BeGreaterThan(1e-3f);
        l.Scaling("other").Should().Be(1.0);
        l.Scaling("default").Should().Be(2.0);
    }

    [Fact]
    public void Rslora_scales_by_alpha_over_sqrt_r()
    {
        new LoraConfig { R = 16, LoraAlpha = 8, UseRsLora = true }.Scaling.Should().Be(2.0);
        new LoraConfig { R = 16, LoraAlpha = 8 }.Scaling.Should().Be(0.5);
    }

    [Fact]
    public void Dropout_is_applied_in_training_only()
    {
        using var scope = NewDisposeScope();
        manual_seed(1);
        var l = new LoraLinear(new Linear(16, 24));
        l.AddAdapter("d", new LoraConfig { R = 4, LoraDropout = 0.5, InitLoraWeights = LoraInit.Random });
        var x = randn(8, 16);
        l.eval();
        var e1 = l.forward(x); var e2 = l.forward(x);
        (e1 - e2).abs().max().item<float>().Should().Be(0f);
        l.train();
        (l.forward(x) - e1).abs().max().item<float>().Should().BeGreaterThan(1e-3f);
    }
}
