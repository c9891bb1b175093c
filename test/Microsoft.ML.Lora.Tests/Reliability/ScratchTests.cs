using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;
namespace Microsoft.ML.Lora.Tests.Reliability;
public sealed class ScratchTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Theory]
    [InlineData(1.0)] [InlineData(10.0)] [InlineData(100.0)] [InlineData(1000.0)]
    public void Probe(double lr)
    {
        using var scope = NewDisposeScope();
        var model = CausalLm.FromPretrained(Fixtures.Model("llama"));
        int[] prompt = [1, 17, 29, 301, 4];
        var completion = model.Generate(prompt, new GenerationOptions { MaxNewTokens = 6, EosTokenIds = [] });
        var peft = PeftModel.GetPeftModel(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] });
        using var trainer = new Trainer(peft, new TrainingOptions { MaxSteps = 8, BatchSize = 1, LearningRate = lr, LrScheduler = LrSchedulerType.Constant, Seed = 1, AppendEos = false });
        try { trainer.Train([new(prompt, completion)]); }
        catch (Exception e) { output.WriteLine(e.Message); }
        output.WriteLine($"lr {lr}: {string.Join(", ", trainer.Losses.Select(l => l.ToString("G4")))}");
    }
    [Fact]
    public void Json()
    {
        try { System.Text.Json.JsonDocument.Parse("{\"a\": [1, 2, {\"b\": \"xy"); } catch (Exception e) { output.WriteLine("J1 " + e.Message); }
        try { System.Text.Json.JsonDocument.Parse("{\"a\": [1, 2, {\"b\": 3"); } catch (Exception e) { output.WriteLine("J2 " + e.Message); }
        try { System.Text.Json.JsonDocument.Parse("{\"a\": [1, 2, {\"b\":"); } catch (Exception e) { output.WriteLine("J3 " + e.Message); }
    }
}
