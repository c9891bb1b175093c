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
    /// keys and values of earlier calls are reused and this call's are appended.
    /// </summary>
    public virtual Tensor Forward(Tensor inputIds, Tensor? attentionMask = null, Tensor? positionIds = null, Generation.KvCache? cache = null) =>
        ForwardEmbeds(Embed(inputIds), attentionMask, positionIds, cache);

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
    public abstract Tensor ForwardEmbeds(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, Generation.KvCache? cache = null);

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
