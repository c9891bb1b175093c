using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Training;

/// <summary>
/// Dynamic loss scaling for float16 models, as PyTorch's GradScaler (which the HF Trainer uses with fp16): the loss is
/// multiplied by <see cref="Scale"/> before backward so small float16 gradients do not flush to zero; the gradients are
/// divided back before clipping. A step whose gradients overflowed is skipped and the scale halved; after
/// <see cref="GrowthInterval"/> good steps in a row the scale doubles.
/// </summary>
internal sealed class LossScaler(double initialScale = 65536.0)
{
    public const int GrowthInterval = 2000;

    public double Scale { get; private set; } = initialScale;
    public int GoodSteps { get; private set; }
    public int SkippedSteps { get; private set; }

    public void Restore(double scale, int goodSteps) { Scale = scale; GoodSteps = goodSteps; }

    /// <summary>Divides the gradients by the scale; false (and the scale halved) when any of them is not finite.</summary>
    public bool Unscale(IEnumerable<Parameter> parameters)
    {
        bool finite = true;
        foreach (var p in parameters)
        {
            using var g = p.grad;
            if (g is null) continue;
            g.div_(Scale);
            using var ok = g.isfinite().all();
            finite &= ok.item<bool>();
        }
        if (finite)
        {
            if (++GoodSteps == GrowthInterval) { Scale *= 2; GoodSteps = 0; }
            return true;
        }
        Scale /= 2;
        GoodSteps = 0;
        SkippedSteps++;
        return false;
    }
}
