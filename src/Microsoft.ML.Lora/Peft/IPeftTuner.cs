using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// What a PEFT method does to a model (PEFT's <c>BaseTuner</c> of tuners/&lt;method&gt;/model.py): injects its layers
/// for each named adapter, says which parameters are an adapter's own, maps them to the keys PEFT saves, and merges.
/// <see cref="PeftModel"/> holds one tuner and does everything that is the same for every method (modules_to_save,
/// trainability, the parameter report, adapter files, the trainer).
/// </summary>
internal interface IPeftTuner
{
    /// <summary>The model the method's layers are injected into (in place).</summary>
    CausalLm Model { get; }

    /// <summary>
    /// Adds adapter <paramref name="name"/> with <paramref name="config"/> (of this method's config type) and returns the
    /// config as it is kept (a method may complete it, as LoRA sets fan_in_fan_out for Conv1D targets). The first adapter
    /// injects the method's layers. <paramref name="autocastAdapterDtype"/>: float32 adapter weights over a
    /// half-precision base (PEFT's autocast_adapter_dtype). PEFT's warnings go to <paramref name="warning"/>.
    /// </summary>
    PeftConfig AddAdapter(string name, PeftConfig config, bool autocastAdapterDtype, Action<string> warning);

    /// <summary>Removes adapter <paramref name="name"/> from every layer.</summary>
    void DeleteAdapter(string name);

    /// <summary>Makes <paramref name="name"/> the adapter used in forward.</summary>
    void SetAdapter(string name);

    /// <summary>When true, forward is the base model's (PEFT's disable_adapter()).</summary>
    bool AdaptersDisabled { set; }

    /// <summary>
    /// The parameters adapter <paramref name="name"/> trains, besides modules_to_save (PEFT's
    /// _mark_only_adapters_as_trainable: LoRA's A and B, and the biases its bias mode names).
    /// </summary>
    IEnumerable<Parameter> TrainableParameters(string name);

    /// <summary>
    /// The adapter's tensors by the key PEFT saves them under (<c>base_model.model.&lt;path&gt;...</c>, without the
    /// adapter name), views of the live parameters; modules_to_save are added by <see cref="PeftModel"/>.
    /// </summary>
    SortedDictionary<string, Tensor> StateDict(string name);

    /// <summary>
    /// Tensors a training checkpoint holds besides the saved adapter so that training resumes exactly, by name (the
    /// live parameters); empty when the saved tensors are the trainable parameters themselves. A prompt encoder with an
    /// MLP saves only its output (PEFT's format), so its parameters go here.
    /// </summary>
    IReadOnlyDictionary<string, Tensor> TrainingState(string name) => new Dictionary<string, Tensor>();

    /// <summary>The method's own fields of adapter_config.json for adapter <paramref name="name"/> (peft_type and the common fields are added by the caller).</summary>
    JsonObject ConfigJson(string name);

    /// <summary>Adds the adapter's update into the base weights (PEFT's merge_adapter); forward then skips it.</summary>
    void Merge(string name);

    /// <summary>Takes every merged update out of the base weights again (unmerge_adapter).</summary>
    void Unmerge();

    /// <summary>
    /// Puts the original modules back, merging adapter <paramref name="mergeName"/> first when given (merge_and_unload /
    /// unload), and returns the plain model.
    /// </summary>
    CausalLm Unload(string? mergeName);

    /// <summary>
    /// Positions the active adapter puts in front of the logits (prompt tuning and P-tuning: its virtual tokens); the
    /// loss gives them -100 labels, as PEFT prepends them. 0 for methods that keep the input's length.
    /// </summary>
    int VirtualTokenPositions => 0;

    /// <summary>
    /// Positions of the model's context the active adapter takes before the input: every prompt-learning method's
    /// virtual tokens, prefix tuning's (the key/value prefix shifts the input's positions) included. Training and
    /// generation leave them free. 0 for methods that keep the input's length.
    /// </summary>
    int ContextPositions => VirtualTokenPositions;

    /// <summary>Logits of the model with the active adapter; methods that change the input (prompt learning) override it.</summary>
    Tensor Forward(Tensor inputIds, Tensor? attentionMask, Tensor? positionIds, Generation.KvCache? cache) =>
        Model.Forward(inputIds, attentionMask, positionIds, cache);

    /// <summary>
    /// The summed causal-LM loss and label count with the active adapter, from the hidden states and a chunked head
    /// (<see cref="CausalLm.LossSum"/>): what the trainer minimises. Prompt learning is its own Model, so this covers it.
    /// </summary>
    (Tensor Sum, long Count) LossSum(Tensor inputIds, Tensor? attentionMask, Tensor labels) =>
        Model.LossSum(inputIds, attentionMask, labels);
}
