using Microsoft.ML.Lora.Generation;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Peft;
using Microsoft.ML.Lora.Training;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// A learning rate far too high makes the loss climb above twice the first step's while staying finite: the trainer
/// warns once, at the first such step (Trainer.Warnings and its Warning callback), and the ML.NET backend writes the
/// warning to the MLContext log.
/// </summary>
public sealed class LossRiseWarningTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    [Fact]
    public void The_trainer_warns_once_at_the_first_step_whose_loss_is_above_twice_the_first()
    {
        using var scope = NewDisposeScope();
        var model = CausalLm.FromPretrained(Fixtures.Model("llama"));
        // The model's own greedy continuation: a low first loss (1.31) that a learning rate of 1 ruins at step 2 (7.48).
        int[] prompt = [1, 17, 29, 301, 4];
        var completion = model.Generate(prompt, new GenerationOptions { MaxNewTokens = 6, EosTokenIds = [] });
        var peft = PeftModel.GetPeftModel(model, new LoraConfig { R = 8, LoraAlpha = 16, TargetModules = [LoraConfig.AllLinear] });
        var received = new List<string>();
        using var trainer = new Trainer(peft, new TrainingOptions { MaxSteps = 8, BatchSize = 1, LearningRate = 1.0, LrScheduler = LrSchedulerType.Constant, Seed = 1, AppendEos = false })
        {
            Warning = received.Add,
        };

        trainer.Train([new(prompt, completion)]);

        var losses = trainer.Losses;
        losses.Should().OnlyContain(l => double.IsFinite(l), "the loss rises but stays finite");
        int first = losses.FindIndex(l => l > Trainer.LossRiseFactor * losses[0]);
        first.Should().BePositive("a learning rate of 1 makes the loss climb above twice its start");
        losses.Count(l => l > Trainer.LossRiseFactor * losses[0]).Should().BeGreaterThan(1, "the warning is given once although several steps qualify");
        trainer.Warnings.Should().ContainSingle().Which.Should().Match(
            $"Warning: at step {first + 1} the training loss {losses[first].ToString("G6", System.Globalization.CultureInfo.InvariantCulture)} is more than 2 times the first step's {losses[0].ToString("G6", System.Globalization.CultureInfo.InvariantCulture)}; the learning rate (1) is probably too high*");
        received.Should().Equal(trainer.Warnings);
    }

    public sealed class IdsRow
    {
        [Microsoft.ML.Data.VectorType] public int[] PromptIds { get; set; } = [];
        [Microsoft.ML.Data.VectorType] public int[] CompletionIds { get; set; } = [];
    }

    [Fact]
    public void The_MLNet_backend_writes_the_warning_to_the_log_once()
    {
        string folder = TinyBaseModel.Create(_temp.File("tiny"), "llama", hiddenSize: 32, layers: 1, heads: 4, seed: 3);
        int[] prompt = [115, 107, 121, 32, 45, 62, 58, 32]; // "sky ->: "
        int[] completion;
        using (var model = CausalLm.FromPretrained(folder)) // its own greedy continuation: a low first loss
            completion = [.. model.Generate(prompt, new GenerationOptions { MaxNewTokens = 6, EosTokenIds = [] })];
        var ml = new MLContext(seed: 1);
        var warnings = new List<string>();
        ml.Log += (_, e) => { if (e.Kind == Microsoft.ML.Runtime.ChannelMessageKind.Warning) lock (warnings) warnings.Add(e.RawMessage); };
        var data = ml.Data.LoadFromEnumerable(new[] { new IdsRow { PromptIds = prompt, CompletionIds = completion } });

        using var lora = ml.Lora().CausalLm(new LoraCausalLmOptions
        {
            BaseModelFolder = folder, Seed = 1, PromptTokensColumnName = "PromptIds", CompletionTokensColumnName = "CompletionIds",
            Lora = { Rank = 8, Alpha = 16, TargetModules = ["all-linear"] },
            Training = { MaxSteps = 8, BatchSize = 1, LearningRate = 1f, LrScheduler = LrSchedulerType.Constant, LoggingSteps = 1 },
        }).Fit(data);

        lock (warnings) warnings.Where(w => w.Contains("times the first step's")).Should().ContainSingle()
            .Which.Should().StartWith("Warning: at step ");
    }
}
