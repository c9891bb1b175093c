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
            foreach (var p in model.parameters()) using (var s = p.sum(type: ScalarType.Float32)) s.item<float>().Should().NotBe(float.NaN);
        });
        using (model)
        {
            model!.parameters().Should().OnlyContain(p => p.dtype == target && p.device_type == DeviceType.CPU);
            rise.Should().BeLessThan(weightsMiB * 1.1 + 64, $"the weights take {weightsMiB:F0} MiB in {target}");
            rise.Should().BeGreaterThan(weightsMiB * 0.75, "every weight was read (the peak starts from memory the process already held)");
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
