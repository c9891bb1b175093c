using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Tests.Generation;
using Microsoft.ML.Lora.Tests.Peft;
using Microsoft.ML.Lora.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;
using Generator = Microsoft.ML.Lora.Generation.Generator;

namespace Microsoft.ML.Lora.Tests.Models;

/// <summary>Float32 arithmetic over bfloat16 weights (ModelLoadOptions.ComputeDType = Float32, Precision.Float32Linear).</summary>
[Collection("TorchGlobalRng")]
public class Float32ArithmeticTests(ITestOutputHelper output)
{
    private static double Rel(Tensor actual, Tensor expected) =>
        ((actual.to_type(ScalarType.Float64) - expected).norm() / expected.norm()).item<double>();

    /// <summary>
    /// Against the float64 product of the same bfloat16 weights: a bfloat16 matmul is off by its output rounding (about
    /// 1.7e-3 relative); Float32Linear by the bfloat16 rounding of the low half of x (2^-18, about 4e-6).
    /// </summary>
    [Theory]
    [InlineData(1, true)]
    [InlineData(7, true)]
    [InlineData(7, false)]
    public void Float32Linear_is_the_float32_product_of_the_bfloat16_weights(int rows, bool withBias)
    {
        using var scope = NewDisposeScope();
        using var generator = new TorchSharp.torch.Generator(7);
        var x = randn([2, rows, 256], generator: generator);
        var w = (randn([96, 256], generator: generator) * 0.05).to_type(ScalarType.BFloat16);
        var b = withBias ? randn([96], generator: generator).to_type(ScalarType.BFloat16) : null;
        var exact = nn.functional.linear(x.to_type(ScalarType.Float64), w.to_type(ScalarType.Float64), b?.to_type(ScalarType.Float64));

        var y = Precision.Float32Linear(x, w, b);
        var plain = nn.functional.linear(x.to_type(ScalarType.BFloat16), w, b);
        double err = Rel(y, exact), plainErr = Rel(plain, exact);
        output.WriteLine($"rows {rows}, bias {withBias}: float32 arithmetic {err:E2}, bfloat16 matmul {plainErr:E2}");
        y.dtype.Should().Be(ScalarType.Float32);
        y.shape.Should().Equal(2, rows, 96);
        err.Should().BeLessThanOrEqualTo(1e-5);
        plainErr.Should().BeGreaterThan(1e-3, "the test must tell the two apart");
    }

    /// <summary>
    /// The backward pass is float32 arithmetic too: d/dx = g·W to the same 2^-18 (a bfloat16 layer is off by 3e-3);
    /// a trainable bfloat16 weight and bias get the float32 gᵀx and Σg rounded to bfloat16.
    /// </summary>
    [Fact]
    public void Float32Linear_gradients_are_float32_products()
    {
        using var scope = NewDisposeScope();
        using var generator = new TorchSharp.torch.Generator(3);
        var w = (randn([48, 64], generator: generator) * 0.1).to_type(ScalarType.BFloat16).requires_grad_();
        var b = randn([48], generator: generator).to_type(ScalarType.BFloat16).requires_grad_();
        var g = randn([2, 3, 48], generator: generator);
        var x = randn([2, 3, 64], generator: generator).requires_grad_();
        (Precision.Float32Linear(x, w, b) * g).sum().backward();
        var x2 = x.detach().clone().requires_grad_();
        (nn.functional.linear(x2.to_type(ScalarType.BFloat16), w.detach()).to_type(ScalarType.Float32) * g).sum().backward();

        var g64 = g.to_type(ScalarType.Float64).flatten(0, 1);
        var x64 = x.detach().to_type(ScalarType.Float64).flatten(0, 1);
        var dx = g64.mm(w.detach().to_type(ScalarType.Float64)).view(2, 3, 64);
        double err = Rel(x.grad!, dx), plainErr = Rel(x2.grad!, dx);
        double wErr = Rel(w.grad!, g64.t().mm(x64)), bErr = Rel(b.grad!, g64.sum([0]));
        output.WriteLine($"d/dx relative error: float32 arithmetic {err:E2}, bfloat16 layer {plainErr:E2}; d/dW {wErr:E2}, d/db {bErr:E2}");
        x.grad!.dtype.Should().Be(ScalarType.Float32);
        err.Should().BeLessThanOrEqualTo(1e-5);
        plainErr.Should().BeGreaterThan(1e-3);
        w.grad!.dtype.Should().Be(ScalarType.BFloat16);
        b.grad!.dtype.Should().Be(ScalarType.BFloat16);
        wErr.Should().BeLessThanOrEqualTo(4e-3, "one bfloat16 rounding of the float32 product");
        bErr.Should().BeLessThanOrEqualTo(4e-3);
    }

    /// <summary>The float32 model of <paramref name="arch"/> with its weights rounded to bfloat16: the floor of any bfloat16 model.</summary>
    internal static CausalLm RoundedFloat32(string arch)
    {
        var model = ModelLoader.Load(Fixtures.Model(arch));
        using var _ = no_grad();
        foreach (var p in model.parameters()) p.copy_(p.to_type(ScalarType.BFloat16).to_type(ScalarType.Float32));
        return model;
    }

    private static CausalLm BFloat16WithFloat32Arithmetic(string arch) =>
        ModelLoader.Load(Fixtures.Model(arch), new ModelLoadOptions { DType = ScalarType.BFloat16, ComputeDType = ScalarType.Float32 });

    [Theory]
    [InlineData("bloom")]
    [InlineData("gpt2")]
    [InlineData("llama")]
    [InlineData("qwen2")]
    public void Greedy_generation_equals_the_float32_model_with_the_same_weights(string arch)
    {
        using var scope = NewDisposeScope();
        using var reference = RoundedFloat32(arch);
        using var model = BFloat16WithFloat32Arithmetic(arch);
        model.Float32Arithmetic.Should().BeTrue();
        var prompt = GeneratorTests.Ints(GeneratorTests.Expected(arch)["greedy_with_cache"])[..6].Select(i => (int)i).ToList();
        var options = new GenerationOptions { MaxNewTokens = 16, EosTokenIds = [] };
        var withCache = new Generator(model).Generate(prompt, options);
        withCache.Should().Equal(new Generator(reference).Generate(prompt, options));
        new Generator(model).Generate(prompt, options with { UseCache = false }).Should().Equal(withCache);
    }

    /// <summary>
    /// LoRA over a bfloat16 base with float32 arithmetic trains as over the float32 model with the same weights: three
    /// AdamW steps at lr 1e-2 give the same losses to 1e-4 (over the plain bfloat16 base they drift by 7e-3).
    /// </summary>
    [Fact]
    public void Lora_trains_over_it_as_over_the_float32_model_with_the_same_weights()
    {
        using var scope = NewDisposeScope();
        double[] Losses(CausalLm model)
        {
            var lm = PeftAdapterIO.Load(model, Path.Combine(Fixtures.Model("llama"), "lora", "adapter_init"));
            var inputs = FixtureLoraTests.Inputs("llama");
            using var batch = new Batch(FixtureLoraTests.Ids(inputs, "train_input_ids"), FixtureLoraTests.Ids(inputs, "train_attention_mask"),
                FixtureLoraTests.Ids(inputs, "train_labels_full"), 0);
            using var trainer = new Trainer(lm, new TrainingOptions { LearningRate = 1e-2, MaxGradNorm = 0, LrScheduler = LrSchedulerType.Constant, MaxSteps = 3 });
            return [.. Enumerable.Range(0, 3).Select(_ => trainer.Step([batch], 1e-2))];
        }
        var expected = Losses(RoundedFloat32("llama"));
        var actual = Losses(BFloat16WithFloat32Arithmetic("llama"));
        var plain = Losses(ModelLoader.Load(Fixtures.Model("llama"), new ModelLoadOptions { DType = ScalarType.BFloat16 }));
        string Show(double[] losses) => string.Join(", ", losses.Select(l => l.ToString("F5")));
        output.WriteLine($"float32 with rounded weights [{Show(expected)}], bfloat16 with float32 arithmetic [{Show(actual)}], plain bfloat16 [{Show(plain)}]");
        actual.Should().BeInDescendingOrder();
        for (int i = 0; i < 3; i++) actual[i].Should().BeApproximately(expected[i], 1e-4);
        Math.Abs(plain[2] - expected[2]).Should().BeGreaterThan(1e-3, "the test must tell float32 arithmetic from bfloat16");
    }

    [Fact]
    public void The_setting_reaches_lora_wrappers_and_modules_to_save_copies()
    {
        using var scope = NewDisposeScope();
        var model = BFloat16WithFloat32Arithmetic("llama");
        var lm = PeftModel.GetPeftModel(model, new LoraConfig { TargetModules = ["q_proj", "v_proj"], ModulesToSave = ["lm_head"] });
        lm.Layers.Values.Should().OnlyContain(l => l.Float32Arithmetic);
        ((ILinear)lm.SavedModules["lm_head"].Copy("default")).Float32Arithmetic.Should().BeTrue();
        model.Float32Arithmetic = false;
        model.modules().OfType<ILinear>().Should().OnlyContain(l => !l.Float32Arithmetic);
    }

    [Fact]
    public void Unsupported_combinations_fail_naming_both_dtypes()
    {
        var fp16 = () => ModelLoader.Load(Fixtures.Model("gpt2"), new ModelLoadOptions { DType = ScalarType.Float16, ComputeDType = ScalarType.Float32 });
        fp16.Should().Throw<ArgumentException>().WithMessage("*compute dtype Float32 over Float16 weights*");
        var autocast = () => ModelLoader.Load(Fixtures.Model("gpt2"), new ModelLoadOptions { ComputeDType = ScalarType.BFloat16 });
        autocast.Should().Throw<ArgumentException>().WithMessage("*compute dtype BFloat16 over Float32 weights*");
        using var half = ModelLoader.Load(Fixtures.Model("gpt2"), new ModelLoadOptions { DType = ScalarType.Float16 });
        var set = () => half.Float32Arithmetic = true;
        set.Should().Throw<NotSupportedException>().WithMessage("*float16 weights*");
    }
}
