using Microsoft.ML.Lora.Generation;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Layers;

/// <summary>
/// transformers' GradientCheckpointingLayer: a decoder layer whose activations are not kept for backward while
/// <see cref="GradientCheckpointing"/> is on (<see cref="CausalLm.GradientCheckpointingEnable"/>) in training; its
/// forward runs again during backward instead (<see cref="GradientCheckpoint"/>). Peak memory then holds one layer's
/// activations instead of all of them, for about one more forward pass of compute.
/// </summary>
internal abstract class GradientCheckpointingLayer(string name) : nn.Module(name)
{
    /// <summary>Recompute this layer in backward instead of keeping its activations (training only, never with a KV cache).</summary>
    public bool GradientCheckpointing { get; set; }

    /// <summary><paramref name="body"/>(<paramref name="x"/>), checkpointed when <see cref="GradientCheckpointing"/> applies.</summary>
    protected Tensor Checkpointed(Tensor x, KvCache? cache, Func<Tensor, Tensor> body) =>
        GradientCheckpointing && training && cache is null && is_grad_enabled()
            ? GradientCheckpoint.Apply(body, x, parameters().Where(p => p.requires_grad))
            : body(x);
}

/// <summary>
/// torch.utils.checkpoint for one function of one tensor: the forward runs without building a graph; backward runs it
/// again with the same dropout masks (the generator's state is saved before the forward and replayed) and
/// differentiates that. The function's trainable parameters are inputs of the autograd node, so their gradients flow
/// even when <c>x</c> does not require grad (the first layer over a frozen embedding), which transformers' reentrant
/// checkpoint needs <c>enable_input_require_grads</c> for. Other tensors the function closes over (masks, rotary
/// angles) are constants to it.
/// </summary>
internal static class GradientCheckpoint
{
    /// <summary>Number of decoder-layer recomputations so far (tests check that checkpointing took place).</summary>
    internal static int Recomputations;

    /// <summary>
    /// <paramref name="body"/>(<paramref name="x"/>), recomputed in backward. <paramref name="trainable"/>: the
    /// parameters requiring grad that <paramref name="body"/> uses (all of them must be used). <paramref name="isLayer"/>:
    /// counted in <see cref="Recomputations"/> (false for the loss's chunks).
    /// </summary>
    public static Tensor Apply(Func<Tensor, Tensor> body, Tensor x, IEnumerable<Parameter> trainable, bool isLayer = true)
    {
        var parameters = trainable.ToList();
        if (!x.requires_grad && parameters.Count == 0) return body(x); // nothing to differentiate
        return Function.apply([body, x, isLayer, .. parameters]);
    }

    private sealed class Function : autograd.SingleTensorFunction<Function>
    {
        public override string Name => "GradientCheckpoint";

        // vars: body, x, isLayer, trainable parameters...
        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var body = (Func<Tensor, Tensor>)vars[0];
            var x = (Tensor)vars[1];
            ctx.save_for_backward([x]);
            ctx.save_data("body", body);
            ctx.save_data("x_requires_grad", x.requires_grad);
            ctx.save_data("is_layer", (bool)vars[2]);
            ctx.save_data("parameters", vars.Skip(3).Cast<Tensor>().ToList());
            ctx.save_data("rng", DropoutState.Capture());
            // Under no_grad (the autograd function's forward), and in a dispose scope of its own: otherwise the
            // layer's intermediate tensors would stay alive until the caller's scope ends (after backward), and
            // checkpointing would keep every layer's activations after all (a GPT-2-small step at 4 x 512 peaked
            // higher with it than without: 5.13 GiB against 4.58).
            using var scope = NewDisposeScope();
            return body(x).MoveToOuterDisposeScope();
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad)
        {
            using var scope = NewDisposeScope();
            var body = (Func<Tensor, Tensor>)ctx.get_data("body");
            bool xRequiresGrad = (bool)ctx.get_data("x_requires_grad");
            var parameters = (List<Tensor>)ctx.get_data("parameters");
            using var rng = (DropoutState)ctx.get_data("rng");
            var x = ctx.get_saved_variables()[0];
            if ((bool)ctx.get_data("is_layer")) Recomputations++;
            using var gradMode = enable_grad();
            var input = x.detach().requires_grad_(xRequiresGrad);
            Tensor y;
            using (rng.Replay()) y = body(input);
            var wrt = (xRequiresGrad ? [input] : new List<Tensor>()).Concat(parameters).ToList();
            var grads = autograd.grad([y], wrt, [grad], allow_unused: true);
            var result = new List<Tensor> { null! };
            int next = 0;
            result.Add(xRequiresGrad ? grads[next++].MoveToOuterDisposeScope() : null!);
            result.Add(null!); // isLayer
            for (int i = 0; i < parameters.Count; i++) result.Add(grads[next++]?.MoveToOuterDisposeScope()!);
            return result;
        }
    }

    /// <summary>The state of the generator dropout draws from (<see cref="Training.Rng"/>), taken before a checkpointed forward.</summary>
    private sealed class DropoutState : IDisposable
    {
        private readonly torch.Generator? _generator;
        private readonly Tensor? _state;

        private DropoutState(torch.Generator? generator) => (_generator, _state) = (generator, generator?.get_state());

        /// <summary>The generator the training step installed (none: dropout would draw fresh masks, nothing to replay).</summary>
        public static DropoutState Capture() => new(Training.Rng.Current);

        /// <summary>
        /// Installs the captured generator (backward may run on another thread) at the captured state; disposing the
        /// result restores where it was, as torch's fork_rng.
        /// </summary>
        public IDisposable Replay()
        {
            if (_generator is null) return new Restore(null, null, default);
            var now = _generator.get_state();
            _generator.set_state(_state!);
            return new Restore(_generator, now, Training.Rng.Use(_generator));
        }

        private sealed class Restore(torch.Generator? generator, Tensor? state, Training.Rng.Scope scope) : IDisposable
        {
            public void Dispose()
            {
                if (generator is null) return;
                scope.Dispose();
                generator.set_state(state!);
                state!.Dispose();
            }
        }

        public void Dispose() => _state?.Dispose();
    }
}
