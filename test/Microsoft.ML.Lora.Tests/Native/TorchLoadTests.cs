using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Native;

public class TorchLoadTests
{
    [Fact]
    public void Tensor_backward_gives_the_analytic_gradient()
    {
        using var scope = NewDisposeScope();
        var x = tensor(new float[] { 1f, 2f, 3f }, requires_grad: true);
        var y = (x * x * 3f).sum();   // dy/dx = 6x
        y.backward();
        x.grad!.data<float>().ToArray().Should().Equal(6f, 12f, 18f);
        y.item<float>().Should().Be(42f);
    }
}
