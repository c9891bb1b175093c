using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Checkpoints;
using Microsoft.ML.Lora.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Models;

/// <summary>
/// Loading without waste (issue 13): shapes checked before any allocation, each parameter created once in its target
/// dtype, the memory-mapped file used as is where the dtype matches. Measured with this process's resident memory
/// (Linux /proc; the peak is reset through /proc/self/clear_refs), so these tests do nothing elsewhere.
/// </summary>
public sealed class LoadingMemoryTests : IDisposable
{
    private const double MiB = 1 << 20;
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    private static bool Measurable => File.Exists("/proc/self/clear_refs") && File.Exists("/proc/self/status");

    private static double StatusMiB(string key) =>
        long.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith(key)).Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024.0;

    /// <summary>Runs <paramref name="action"/> and returns how far the peak resident memory rose above the memory before it, in MiB.</summary>
    private static double PeakRiseMiB(Action action)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        Lora.Native.NativeHeap.Trim();
        double before = StatusMiB("VmRSS:");
        File.WriteAllText("/proc/self/clear_refs", "5"); // resets VmHWM to the current RSS
        action();
        return StatusMiB("VmHWM:") - before;
    }

    /// <summary>A GPT-2 config of about <c>params</c> parameters: wide layers and a large vocabulary.</summary>
    private static ModelConfig Wide(int vocab, int hidden, int layers)
    {
        var json = JsonNode.Parse(File.ReadAllText(Path.Combine(Fixtures.Model("gpt2"), "config.json")))!.AsObject();
        json["vocab_size"] = vocab; json["n_embd"] = hidden; json["n_layer"] = layers; json["n_head"] = 8; json["n_positions"] = 64;
        return ModelConfig.Parse(json);
    }

    [Fact]
    public void Config_that_disagrees_with_its_weights_fails_before_allocating()
    {
        if (!Measurable) return;
        // config.json of a 1.6 GB float32 model over the tiny fixture's weights: every shape disagrees.
        var config = ModelFactory.ToJson(Wide(vocab: 400_000, hidden: 1024, layers: 2));
        File.WriteAllText(_temp.File("config.json"), config.ToJsonString());
        File.Copy(Path.Combine(Fixtures.Model("gpt2"), "model.safetensors"), _temp.File("model.safetensors"));
        Exception? error = null;
        double rise = PeakRiseMiB(() => error = Record.Exception(() => ModelLoader.Load(_temp.Path)));
        error.Should().BeOfType<CheckpointMismatchException>().Which.Message
            .Should().Contain("'transformer.wte.weight': the model expects [400000, 1024], the checkpoint has [");
        rise.Should().BeLessThan(100, "the shapes come from the headers and the model was built on the meta device");
    }

    [Theory]
    [InlineData(ScalarType.BFloat16, ScalarType.BFloat16)]
    [InlineData(ScalarType.BFloat16, ScalarType.Float32)]
    [InlineData(ScalarType.Float32, ScalarType.Float32)]
    public void Peak_memory_of_a_load_is_the_weights_once(ScalarType stored, ScalarType target)
    {
        if (!Measurable) return;
        var config = Wide(vocab: 32_000, hidden: 1024, layers: 3); // 71M parameters
        using (var random = ModelFactory.CreateRandom(config, seed: 1, dtype: stored)) ModelFactory.Save(random, _temp.Path);
        long parameters = 0;
        using (var file = SafeTensorsFile.Open(_temp.File(CheckpointFolder.SingleFile)))
            parameters = file.Tensors.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b));
        double weightsMiB = parameters * (target == ScalarType.Float32 ? 4 : 2) / MiB;

        CausalLm? model = null;
        double rise = PeakRiseMiB(() =>
        {
            model = ModelLoader.Load(_temp.Path, new ModelLoadOptions { DType = target });
            // Read every weight, as a forward pass does: memory-mapped pages become resident only when read.
            using var _ = no_grad();
            // (a sum in the stored dtype: sum(dtype: float32) would first make a float32 copy of the whole tensor)
            foreach (var p in model.parameters()) using (var s = p.sum()) using (var f = s.to_type(ScalarType.Float32)) f.item<float>().Should().NotBe(float.NaN);
        });
        using (model)
        {
            model!.parameters().Should().OnlyContain(p => p.dtype == target && p.device_type == DeviceType.CPU);
            rise.Should().BeLessThan(weightsMiB * 1.1 + 64, $"the weights take {weightsMiB:F0} MiB in {target}");
            rise.Should().BeGreaterThan(weightsMiB * 0.75, "every weight was read (the peak starts from memory the process already held)");
        }
    }

    /// <summary>
    /// Quantizing while loading costs the quantized model plus a working set that does not grow with the model: the
    /// arithmetic runs in chunks of 1M values, each layer's float weight is freed before the next is read, and the heap
    /// blocks freed are given back after each layer. Before, each transposed Conv1D weight (GPT-2) was left to the
    /// finalizer with its float bytes: this 14-layer load peaked 340 MiB above its model.
    /// </summary>
    [Theory]
    [InlineData("int8")]
    [InlineData("nf4")]
    public void Peak_memory_of_a_quantized_load_is_the_quantized_model(string mode)
    {
        if (!Measurable) return;
        var bnb = mode == "int8"
            ? new Lora.Quantization.BitsAndBytesConfig { LoadIn8bit = true }
            : new Lora.Quantization.BitsAndBytesConfig { LoadIn4bit = true, Bnb4bitQuantType = "nf4", Bnb4bitUseDoubleQuant = true, Bnb4bitComputeDType = ScalarType.BFloat16 };
        var options = new ModelLoadOptions { DType = ScalarType.BFloat16, QuantizationConfig = bnb };
        // 14 layers of 12.6M linear parameters (353 MiB in bfloat16) and a 62 MiB embedding.
        using (var random = ModelFactory.CreateRandom(Wide(vocab: 32_000, hidden: 1024, layers: 14), seed: 4, dtype: ScalarType.BFloat16))
            ModelFactory.Save(random, _temp.Path);
        ModelLoader.Load(_temp.Path, options).Dispose(); // once first: libtorch's code pages count as resident memory too
        CausalLm? model = null;
        double rise = PeakRiseMiB(() => model = ModelLoader.Load(_temp.Path, options));
        using (model)
        {
            var quantized = model!.modules().OfType<Lora.Quantization.IQuantizedLinear>().ToList();
            quantized.Should().HaveCount(4 * 14);
            long bytes = quantized.Sum(q => q.QuantizedStateDict().Sum(kv => kv.Value.numel() * kv.Value.ElementSize))
                + model.parameters().Where(p => p.dtype == ScalarType.BFloat16).Sum(p => p.numel() * 2);
            double modelMiB = bytes / MiB;
            rise.Should().BeLessThan(modelMiB + 100, $"the {mode} model takes {modelMiB:F0} MiB; one chunk's arithmetic and one float weight come on top");
            rise.Should().BeGreaterThan(modelMiB * 0.5, "the model is resident after the load (part of it may reuse memory the process already held)");
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Mapped_weights_are_read_at_load_unless_asked_not_to(bool readMappedWeights)
    {
        if (!Measurable) return;
        var config = Wide(vocab: 32_000, hidden: 1024, layers: 3); // 71M parameters, 136 MiB in bfloat16
        using (var random = ModelFactory.CreateRandom(config, seed: 3, dtype: ScalarType.BFloat16)) ModelFactory.Save(random, _temp.Path);
        double weightsMiB = new FileInfo(_temp.File(CheckpointFolder.SingleFile)).Length / MiB;
        CausalLm? model = null;
        double rise = PeakRiseMiB(() => model = ModelLoader.Load(_temp.Path, new ModelLoadOptions { DType = ScalarType.BFloat16, ReadMappedWeights = readMappedWeights }));
        using (model)
        {
            model!.parameters().First().dtype.Should().Be(ScalarType.BFloat16);
            if (readMappedWeights)
                rise.Should().BeInRange(weightsMiB * 0.9, weightsMiB * 1.1 + 64, $"the load read the {weightsMiB:F0} MiB mapped file, and holds it once");
            else
                rise.Should().BeLessThan(weightsMiB * 0.25, "nothing of the mapped file is read until first use");
        }
    }

    [Fact]
    public void Bfloat16_weights_loaded_as_bfloat16_are_the_mapped_file_and_writes_stay_private()
    {
        var config = Wide(vocab: 1000, hidden: 64, layers: 1);
        using (var random = ModelFactory.CreateRandom(config, seed: 2, dtype: ScalarType.BFloat16)) ModelFactory.Save(random, _temp.Path);
        byte[] before = File.ReadAllBytes(_temp.File(CheckpointFolder.SingleFile));
        using var model = ModelLoader.Load(_temp.Path, new ModelLoadOptions { DType = ScalarType.BFloat16 });
        using var reloaded = ModelLoader.Load(_temp.Path, new ModelLoadOptions { DType = ScalarType.BFloat16 });
        using (no_grad())
            foreach (var p in model.parameters()) p.add_(1); // as a LoRA merge writes into the base weight
        File.ReadAllBytes(_temp.File(CheckpointFolder.SingleFile)).Should().Equal(before, "the mapping is copy-on-write");
        var (a, b) = (model.named_parameters().First(p => p.name == "transformer.wte.weight").parameter,
            reloaded.named_parameters().First(p => p.name == "transformer.wte.weight").parameter);
        (a - b).to(ScalarType.Float32).abs().min().item<float>().Should().BeGreaterThan(0.5f, "each load has its own pages once written");
    }
}
