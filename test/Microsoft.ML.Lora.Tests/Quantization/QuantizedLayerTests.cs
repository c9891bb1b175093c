using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Quantization;
using Microsoft.ML.Lora.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Quantization;

/// <summary>Linear4bit / Linear8bitLt as layers: forward, backward, LoRA over them, merge; BitsAndBytesConfig rules.</summary>
public class QuantizedLayerTests
{
    private static Tensor Weight(long rows, long cols, ulong seed)
    {
        using var g = new Generator(seed);
        return randn(rows, cols, generator: g) * 0.02;
    }

    public static TheoryData<string> Kinds => new() { "nf4", "fp4_dq", "int8" };

    private static IQuantizedLinear Layer(string kind, Tensor w, Tensor? bias) => kind switch
    {
        "int8" => Linear8bitLt.Quantize(w, bias, ScalarType.Float32),
        _ => new Linear4bit(QuantState4Bit.Quantize(w, kind[..3], kind.EndsWith("_dq", StringComparison.Ordinal)), bias, ScalarType.Float32),
    };

    [Theory]
    [MemberData(nameof(Kinds))]
    public void Forward_and_input_gradient_are_those_of_the_dequantized_weight_and_the_weight_gets_none(string kind)
    {
        using var scope = NewDisposeScope();
        var layer = Layer(kind, Weight(48, 40, 1), randn(48) * 0.1);
        var module = (nn.Module<Tensor, Tensor>)layer;
        var x = randn(2, 3, 40).requires_grad_(true);
        var y = module.forward(x);
        var w = layer.DequantizeWeight();
        var x2 = x.detach().clone().requires_grad_(true);
        var y2 = nn.functional.linear(x2, w, layer.bias);
        y.allclose(y2, 0, 0).Should().BeTrue("forward is x · dequantize(W)ᵀ + b");
        var g = randn(2, 3, 48);
        y.backward([g]);
        y2.backward([g]);
        x.grad!.allclose(x2.grad!, 1e-6, 1e-7).Should().BeTrue("the input gets g · dequantize(W)");
        layer.weight.requires_grad.Should().BeFalse();
        layer.weight.grad.Should().BeNull();
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void Lora_wraps_a_quantized_layer_and_merges_by_requantizing(string kind)
    {
        using var scope = NewDisposeScope();
        var w = Weight(32, 64, 2);
        var layer = Layer(kind, w, null);
        var lora = new LoraLinear((nn.Module<Tensor, Tensor>)layer);
        lora.AddAdapter("default", new LoraConfig { R = 4, LoraAlpha = 8 });
        lora.LoraA("default").dtype.Should().Be(ScalarType.Float32, "a quantized base keeps float32 adapters");
        using (no_grad()) lora.LoraB("default").normal_(0, 0.05);
        var before = layer.DequantizeWeight();
        var delta = lora.DeltaWeight("default");
        Tensor expected;
        if (kind == "int8") { var (q, s) = Int8Weight.Quantize(before + delta); expected = Int8Weight.Dequantize(q, s); }
        else { using var st = QuantState4Bit.Quantize(before + delta, kind[..3], kind.EndsWith("_dq", StringComparison.Ordinal)); expected = st.Dequantize(); }
        lora.Merge();
        layer.DequantizeWeight().allclose(expected, 0, 0).Should().BeTrue("merge = quantize(dequantize(W) + ΔW), as PEFT's bnb layers");
        layer.weight.dtype.Should().Be(kind == "int8" ? ScalarType.Int8 : ScalarType.Byte);
    }

    /// <summary>
    /// Replaces the former refusal (DoRA over a quantized base threw NotSupportedException): DoRA now reads the
    /// dequantized weight, as PEFT's dequantize_module_weight, for its magnitude and its forward (with and without dropout).
    /// </summary>
    [Theory]
    [MemberData(nameof(Kinds))]
    public void Dora_over_a_quantized_layer_is_dora_over_the_dequantized_weight(string kind)
    {
        using var scope = NewDisposeScope();
        var layer = Layer(kind, Weight(16, 64, 3), randn(16) * 0.1);
        var dense = new Microsoft.ML.Lora.Models.Layers.Linear(64, 16);
        using (no_grad()) { dense.weight.copy_(layer.DequantizeWeight()); dense.bias!.copy_(layer.bias!); }
        var config = new LoraConfig { R = 2, LoraAlpha = 4, LoraDropout = 0.5, UseDora = true };
        var lora = new LoraLinear((nn.Module<Tensor, Tensor>)layer);
        var reference = new LoraLinear(dense);
        using (Rng.Use(new Generator(11))) lora.AddAdapter("default", config);
        using (Rng.Use(new Generator(11))) reference.AddAdapter("default", config);
        lora.Magnitude("default")!.allclose(linalg.vector_norm(layer.DequantizeWeight(), dims: [1]), 0, 0).Should().BeTrue("m = ‖dequantize(W)‖ per row while B is 0");
        using (no_grad())
        {
            var b = randn(16, 2) * 0.05;
            lora.LoraB("default").copy_(b);
            reference.LoraB("default").copy_(b);
        }
        var x = randn(3, 64);
        lora.eval(); reference.eval();
        lora.forward(x).allclose(reference.forward(x), 1e-6, 1e-6).Should().BeTrue("eval: the base output is reused");
        lora.train(); reference.train();
        Tensor y, yRef;
        using (Rng.Use(new Generator(5))) y = lora.forward(x);
        using (Rng.Use(new Generator(5))) yRef = reference.forward(x);
        y.allclose(yRef, 1e-6, 1e-6).Should().BeTrue("dropout: W x is recomputed from the dequantized weight");
    }

    /// <summary>
    /// dtypes as PEFT's: over NF4 quantized from bfloat16 the adapter and m are float32, m is the norm of the bfloat16
    /// dequantized weight taken in float32 (PEFT's update_layer adds the float32 B A to it), and a merge quantizes
    /// m / n · (W + ΔW) cast back to bfloat16 (DoraLinearVariant.merge_safe's new_weight.to(orig_dtype)).
    /// </summary>
    [Fact]
    public void Dora_over_nf4_from_bfloat16_keeps_float32_adapters_and_merges_in_bfloat16()
    {
        using var scope = NewDisposeScope();
        var layer = new Linear4bit(QuantState4Bit.Quantize(Weight(16, 64, 6).to(ScalarType.BFloat16), "nf4", true), null, ScalarType.BFloat16);
        var w = layer.DequantizeWeight();
        w.dtype.Should().Be(ScalarType.BFloat16);
        var lora = new LoraLinear(layer);
        lora.AddAdapter("default", new LoraConfig { R = 2, LoraAlpha = 4, UseDora = true });
        var m = lora.Magnitude("default")!;
        m.dtype.Should().Be(ScalarType.Float32);
        m.allclose(linalg.vector_norm(w.to(ScalarType.Float32), dims: [1]), 0, 0).Should().BeTrue();
        using (no_grad()) { lora.LoraB("default").normal_(0, 0.05); m.mul_(1.5); }
        var d = lora.DeltaWeight("default");
        var norm = linalg.vector_norm(w.to(ScalarType.Float32) + d, dims: [1]);
        var merged = ((m / norm).unsqueeze(1) * (w.to(ScalarType.Float32) + d)).to(ScalarType.BFloat16);
        using var expected = QuantState4Bit.Quantize(merged, "nf4", true);
        lora.Merge();
        var after = layer.DequantizeWeight();
        after.dtype.Should().Be(ScalarType.BFloat16, "the merged weight is quantized from the dequantized dtype");
        after.allclose(expected.Dequantize(), 0, 0).Should().BeTrue("merge = quantize((m / ‖W + ΔW‖ · (W + ΔW)).to(bfloat16))");
    }

    [Fact]
    public void Moving_to_another_dtype_keeps_the_codes()
    {
        using var scope = NewDisposeScope();
        var four = (Linear4bit)Layer("nf4", Weight(16, 64, 4), zeros(16));
        var eight = (Linear8bitLt)Layer("int8", Weight(16, 64, 4), zeros(16));
        var w4 = four.DequantizeWeight();
        four.to(ScalarType.BFloat16);
        eight.to(ScalarType.BFloat16);
        four.weight.dtype.Should().Be(ScalarType.Byte);
        eight.weight.dtype.Should().Be(ScalarType.Int8);
        eight.SCB.dtype.Should().Be(ScalarType.Float32);
        four.bias!.dtype.Should().Be(ScalarType.BFloat16);
        four.DequantizeWeight().allclose(w4, 0, 0).Should().BeTrue();
    }

    [Theory]
    [InlineData(true, true, "*LoadIn4bit and LoadIn8bit are both true*")]
    [InlineData(false, false, "*quantizes nothing*LoadIn4bit*LoadIn8bit*")]
    public void Bad_combinations_are_named(bool four, bool eight, string message)
    {
        var act = () => new BitsAndBytesConfig { LoadIn4bit = four, LoadIn8bit = eight }.Validate();
        act.Should().Throw<ArgumentException>().WithMessage(message);
    }

    [Fact]
    public void Bad_options_are_named()
    {
        var type = () => new BitsAndBytesConfig { LoadIn4bit = true, Bnb4bitQuantType = "int4" }.Validate();
        type.Should().Throw<ArgumentException>().WithMessage("*Bnb4bitQuantType 'int4'*\"nf4\" or \"fp4\"*");
        var dtype = () => new BitsAndBytesConfig { LoadIn4bit = true, Bnb4bitComputeDType = ScalarType.Int32 }.Validate();
        dtype.Should().Throw<ArgumentException>().WithMessage("*Bnb4bitComputeDType Int32*");
        var threshold = () => new BitsAndBytesConfig { LoadIn8bit = true, LlmInt8Threshold = -1 }.Validate();
        threshold.Should().Throw<ArgumentException>().WithMessage("*LlmInt8Threshold*");
        var load = () => ModelLoader.Load(Fixtures.Model("llama"), new ModelLoadOptions { QuantizationConfig = new BitsAndBytesConfig() });
        load.Should().Throw<ArgumentException>().WithMessage("*quantizes nothing*");
    }

    [Theory]
    [InlineData(null, "model.layers.0.self_attn.q_proj", true)]
    [InlineData(null, "lm_head", false)]
    [InlineData(new[] { "q_proj" }, "model.layers.0.self_attn.q_proj", false)]
    [InlineData(new[] { "q_proj" }, "lm_head", true)]
    [InlineData(new[] { "model.layers.1" }, "model.layers.1.mlp.up_proj", false)]
    [InlineData(new[] { "model.layers.1" }, "model.layers.10.mlp.up_proj", true)]
    [InlineData(new[] { "self_attn" }, "model.layers.0.self_attn.q_proj", false)]
    public void Skipped_modules_follow_transformers(string[]? skip, string path, bool converted) =>
        new BitsAndBytesConfig { LoadIn8bit = true, LlmInt8SkipModules = skip }.Converts(path).Should().Be(converted);

    [Fact]
    public void Eight_bit_loading_quantizes_every_linear_but_the_skipped_and_keeps_the_rest()
    {
        using var scope = NewDisposeScope();
        using var model = ModelLoader.Load(Fixtures.Model("llama"), new ModelLoadOptions { QuantizationConfig = new() { LoadIn8bit = true, LlmInt8SkipModules = ["v_proj"] } });
        using var plain = ModelLoader.Load(Fixtures.Model("llama"));
        var modules = model.named_modules().ToDictionary(m => m.name, m => m.module);
        var reference = plain.named_modules().ToDictionary(m => m.name, m => m.module);
        modules["lm_head"].Should().BeOfType<Linear8bitLt>("a skip list replaces transformers' default [lm_head]");
        modules["model.layers.0.self_attn.v_proj"].Should().BeOfType<Microsoft.ML.Lora.Models.Layers.Linear>();
        foreach (var (name, m) in modules.Where(m => m.Value is Linear8bitLt))
        {
            var (q, scb) = Int8Weight.Quantize(((Microsoft.ML.Lora.Models.Layers.ILinear)reference[name]).weight);
            ((Linear8bitLt)m).weight.allclose(q, 0, 0).Should().BeTrue(name);
            ((Linear8bitLt)m).SCB.allclose(scb, 0, 0).Should().BeTrue(name);
        }
        model.named_parameters().Where(p => p.name.Contains("norm", StringComparison.Ordinal) || p.name.Contains("embed", StringComparison.Ordinal))
            .Should().OnlyContain(p => p.parameter.dtype == ScalarType.Float32);
    }
}
