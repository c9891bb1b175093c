using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Training;

/// <summary>
/// Where the library's randomness comes from: never libtorch's global generator (shared by every thread of the
/// process, so two concurrent Fits would interleave their draws), but the <see cref="torch.Generator"/> that the
/// current operation made from its seed and installed with <see cref="Use"/>: a Fit's LoRA initialisation, each
/// training step's dropout masks. It flows with the call (an <see cref="AsyncLocal{T}"/>), so concurrent Fits each
/// see their own. The draws are libtorch's own (mt19937 on CPU), in the order PyTorch makes them.
/// </summary>
internal static class Rng
{
    private static readonly AsyncLocal<Generator?> Installed = new();

    /// <summary>The generator installed on this call path, or null.</summary>
    public static Generator? Current => Installed.Value;

    /// <summary>Installs <paramref name="generator"/> until the returned scope is disposed.</summary>
    public static Scope Use(Generator generator)
    {
        var previous = Installed.Value;
        Installed.Value = generator;
        return new Scope(previous);
    }

    /// <summary>The seed of <see cref="UseDefaultUnlessInstalled"/>: transformers' default seed.</summary>
    public const long DefaultSeed = 42;

    /// <summary>
    /// Installs a generator seeded with <see cref="DefaultSeed"/> for one operation (an adapter's initialisation)
    /// unless the caller installed one, so the result is the same on every call and in any concurrency.
    /// </summary>
    public static IDisposable UseDefaultUnlessInstalled()
    {
        if (Current is not null) return new Scope(Current);
        var generator = new Generator((ulong)DefaultSeed);
        var scope = Use(generator);
        return new Owned(generator, scope);
    }

    private sealed class Owned(Generator generator, Scope scope) : IDisposable
    {
        public void Dispose()
        {
            scope.Dispose();
            generator.Dispose();
        }
    }

    /// <summary>Restores the previously installed generator.</summary>
    public readonly struct Scope(Generator? previous) : IDisposable
    {
        public void Dispose() => Installed.Value = previous;
    }

    /// <summary>The installed generator; outside any (a forward in training mode called by user code) a fresh one seeded from the OS.</summary>
    private static Generator CurrentOrFresh() => Current ?? Unseeded;

    /// <summary>
    /// This thread's generator seeded from the OS: for the default initialisation of a layer built outside a seeded
    /// operation (torch's constructors draw it from the global generator; here neither that one nor the installed one
    /// is touched, so building a layer never shifts a seeded sequence).
    /// </summary>
    public static Generator Unseeded => _fallback ??= new Generator((ulong)Random.Shared.NextInt64());

    [ThreadStatic] private static Generator? _fallback;

    /// <summary>
    /// Inverted dropout as libtorch's CPU <c>dropout</c>: <c>x · bernoulli(1 - p) / (1 - p)</c>, the mask drawn from
    /// the installed generator (the same draws as <c>torch.nn.functional.dropout</c> after seeding it the same way).
    /// </summary>
    public static Tensor Dropout(Tensor x, double p)
    {
        if (p >= 1) return zeros_like(x);
        using var noise = empty_like(x).bernoulli_(1 - p, CurrentOrFresh());
        noise.div_(1 - p);
        return x.mul(noise);
    }

    /// <summary>
    /// <c>torch.nn.init.kaiming_uniform_(w, a)</c> (fan_in, leaky_relu) from the installed generator: uniform in
    /// ±sqrt(6 / ((1 + a²) · fan_in)); from <paramref name="generator"/> when given.
    /// </summary>
    public static void KaimingUniform(Tensor weight, double a, Generator? generator = null)
    {
        long fanIn = weight.shape[1] * (weight.dim() > 2 ? weight[0, 0].numel() : 1);
        double bound = Math.Sqrt(3.0) * Math.Sqrt(2.0 / (1 + a * a)) / Math.Sqrt(fanIn);
        using (no_grad()) weight.uniform_(-bound, bound, generator ?? CurrentOrFresh());
    }

    /// <summary><c>torch.nn.init.normal_(w, 0, std)</c> from <paramref name="generator"/>, else the installed generator.</summary>
    public static void Normal(Tensor weight, double std, Generator? generator = null)
    {
        using (no_grad()) weight.normal_(0, std, generator ?? CurrentOrFresh());
    }
}
