using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models;

/// <summary>
/// A causal language model (transformers' <c>AutoModelForCausalLM</c>): load one with <see cref="FromPretrained"/>,
/// compute logits with <see cref="Forward"/>, generate with <see cref="Generate(IReadOnlyList{int}, Generation.GenerationOptions)"/>,
/// save with <see cref="SavePretrained"/>, and adapt it with <see cref="Peft.PeftModel"/>. Base of every architecture of
/// this library. Submodules and parameters carry the Hugging Face names
/// (<c>transformer.h.0.self_attention.query_key_value.weight</c>), so loading a checkpoint is a straight mapping and
/// LoRA finds its targets by the names PEFT uses. Every projection is a field of type
/// <c>nn.Module&lt;Tensor, Tensor&gt;</c> holding a <see cref="Layers.ILinear"/>, read on each forward, so that
/// <c>Peft.ModuleSurgery</c> can swap it for a LoRA wrapper.
/// </summary>
public abstract partial class CausalLm : nn.Module
{
    private protected CausalLm(string name) : base(name) { }

    /// <summary>The configuration the model was built from.</summary>
    public abstract ModelConfig Config { get; }

    /// <summary>
    /// Logits [batch, time, vocab] for <paramref name="inputIds"/> [batch, time]. <paramref name="attentionMask"/>
    /// [batch, past + time] (1 = token, 0 = padding) may be null (all ones). Position ids, when null, come from the
    /// mask as transformers' generate() derives them: clamp(cumsum(mask) - 1, 0). With a <paramref name="cache"/>,
    /// keys and values of earlier calls are reused and this call's are appended. Every input must be on
    /// <see cref="Device"/> (an <see cref="InvalidOperationException"/> names the one that is not); a token id outside
    /// the vocabulary (or, for learned positions, a position past the table) is an <see cref="ArgumentOutOfRangeException"/>.
    /// </summary>
    public Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, Generation.KvCache? cache = null)
    {
        CheckInputs(inputIds, attentionMask, positionIds);
        return ForwardEmbeds(Embed(inputIds), attentionMask, positionIds, cache);
    }

    /// <summary>Every input on <see cref="Device"/>, every token id inside the vocabulary.</summary>
    private void CheckInputs(Tensor inputIds, Tensor? attentionMask, Tensor? positionIds = null)
    {
        var device = Device;
        CheckDevice("input_ids", inputIds, device);
        if (attentionMask is not null) CheckDevice("attention_mask", attentionMask, device);
        if (positionIds is not null) CheckDevice("position_ids", positionIds, device);
        InputBounds.Check(inputIds, Config.VocabSize, "input_ids",
            $"the model's vocabulary has {Config.VocabSize} ids (vocab_size in config.json); encode with the model's own tokenizer");
    }

    /// <summary>
    /// The summed causal-LM loss of <paramref name="inputIds"/> against <paramref name="labels"/> (transformers'
    /// ForCausalLMLoss before its division: shift, ignore -100) and the number of label tokens, computed from the final
    /// hidden states without ever holding the logits of the whole batch (<see cref="Training.CausalLmLoss.ChunkedSum"/>):
    /// only positions with a label go through <see cref="LmHead"/>, a chunk of rows at a time. Its tensors belong to the
    /// caller's dispose scope, which must last until backward.
    /// </summary>
    internal (Tensor Sum, long Count) LossSum(Tensor inputIds, Tensor? attentionMask, Tensor labels)
    {
        CheckInputs(inputIds, attentionMask);
        var embeds = Embed(inputIds);
        AttentionBudget.Check(this, embeds, past: 0);
        var hidden = ForwardHidden(embeds, attentionMask);
        return Training.CausalLmLoss.ChunkedSum(hidden, labels, LmHead, Config.VocabSize, LmHeadParameters().Where(p => p.requires_grad));
    }

    /// <summary>
    /// The parameters <see cref="LmHead"/> uses that may train: those under <c>lm_head</c> (its LoRA, a
    /// modules_to_save copy). A tied head multiplies by the input embedding's base matrix, which every PEFT method
    /// keeps frozen. Only these are inputs of the loss's checkpointed chunks, so they alone get gradients through them.
    /// </summary>
    internal IEnumerable<TorchSharp.Modules.Parameter> LmHeadParameters() =>
        named_parameters().Where(p => p.name.StartsWith("lm_head.", StringComparison.Ordinal)).Select(p => p.parameter);

    /// <summary>
    /// transformers' gradient_checkpointing_enable: in training, each decoder layer keeps only its input for backward
    /// and runs again there (with the same dropout masks), so activations take one layer's worth of memory instead of
    /// all layers'. Losses and gradients are those without it; a step costs about one more forward pass.
    /// </summary>
    public void GradientCheckpointingEnable() => SetGradientCheckpointing(true);

    /// <summary>Turns <see cref="GradientCheckpointingEnable"/> off.</summary>
    public void GradientCheckpointingDisable() => SetGradientCheckpointing(false);

    /// <summary>Whether gradient checkpointing is on (transformers' is_gradient_checkpointing).</summary>
    public bool IsGradientCheckpointing => modules().OfType<GradientCheckpointingLayer>().Any(l => l.GradientCheckpointing);

    private void SetGradientCheckpointing(bool on)
    {
        foreach (var layer in modules().OfType<GradientCheckpointingLayer>()) layer.GradientCheckpointing = on;
    }

    /// <summary>
    /// transformers' enable_input_require_grads: the input embeddings' output requires grad in training, so that a
    /// reentrant checkpoint over frozen layers still reaches the adapters (this library's checkpoint does not need it;
    /// <see cref="Peft.KbitTraining.PrepareModelForKbitTraining"/> sets it as PEFT does).
    /// </summary>
    public void EnableInputRequireGrads()
    {
        foreach (var embedding in modules().OfType<Embedding>()) embedding.OutputRequiresGrad = true;
    }

    /// <summary>
    /// The longest sequence the model can compute at all (learned absolute positions: GPT-2's n_positions), or null when
    /// positions have no hard limit (rotary, ALiBi). Generation refuses, before any forward pass, to go past it.
    /// </summary>
    internal virtual int? PositionLimit => null;

    /// <summary>The device of the model's parameters, where its inputs, labels and KV cache belong.</summary>
    public Device Device
    {
        get
        {
            foreach (var p in parameters()) return p.device;
            return CPU;
        }
    }

    private static void CheckDevice(string name, Tensor input, Device device)
    {
        if (input.device_type != device.type || input.device_index != device.index)
            throw new InvalidOperationException(
                $"{name} is on {input.device} but the model is on {device}: move the inputs to the model's device (model.Device) before calling Forward.");
    }

    /// <summary>
    /// The input embedding layer's output for <paramref name="inputIds"/> (transformers' get_input_embeddings()(ids)):
    /// (batch, seq) → (batch, seq, hidden). Prompt-learning methods put their virtual tokens in front of it.
    /// </summary>
    public abstract Tensor Embed(Tensor inputIds);

    /// <summary>
    /// <see cref="Forward"/> from input embeddings (transformers' <c>inputs_embeds</c>): (batch, seq, hidden) → logits
    /// (batch, seq, vocab). What the model does after its embedding lookup (BLOOM's embedding layer norm, GPT-2's
    /// position embeddings) applies to every row of <paramref name="inputsEmbeds"/>.
    /// </summary>
    public Tensor ForwardEmbeds(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, Generation.KvCache? cache = null)
    {
        AttentionBudget.Check(this, inputsEmbeds, cache?.Length ?? 0);
        return LmHead(ForwardHidden(inputsEmbeds, attentionMask, positionIds, cache));
    }

    /// <summary>
    /// The body of <see cref="ForwardEmbeds"/> (transformers' <c>self.model(...)</c>, its last_hidden_state):
    /// (batch, seq, hidden) input embeddings → final hidden states (batch, seq, hidden), after the final norm.
    /// </summary>
    internal abstract Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, Generation.KvCache? cache = null);

    /// <summary>
    /// The output layer (transformers' <c>lm_head</c>, tied or not, with any final soft-cap): hidden states (..., hidden)
    /// → float32 logits (..., vocab). Applied to any rows, so the loss can run it on chunks of positions.
    /// </summary>
    internal abstract Tensor LmHead(Tensor hiddenStates);

    /// <summary>
    /// False (default): the matrix multiplications run in the weights' dtype, as in transformers. True: those of a
    /// bfloat16 model run in float32 arithmetic over its bfloat16 weights (<see cref="Precision.Float32Linear"/>), so
    /// that it computes what a float32 model with the same weights computes, at two to three times the time of a
    /// bfloat16 matmul. Sets <see cref="ILinear.Float32Arithmetic"/> on every linear layer (set it again after adding layers).
    /// </summary>
    public bool Float32Arithmetic
    {
        get => _float32Arithmetic;
        set
        {
            if (value && parameters().FirstOrDefault(p => p.dtype == ScalarType.Float16) is not null)
                throw new NotSupportedException("Float32 arithmetic is supported over bfloat16 weights; this model has float16 weights: load it as bfloat16 or float32.");
            _float32Arithmetic = value;
            foreach (var linear in modules().OfType<ILinear>()) linear.Float32Arithmetic = value;
        }
    }

    private bool _float32Arithmetic;

    /// <summary>Float32 logits of the final hidden states <paramref name="h"/> through the tied embedding matrix.</summary>
    private protected Tensor Logits(Tensor h, Tensor embedding) =>
        Precision.Linear(h, embedding, null, _float32Arithmetic).As(Precision.Compute);
}
