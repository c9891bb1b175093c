using Microsoft.ML.Lora.Models;
using Microsoft.ML.Lora.Models.Layers;
using TorchSharp;
using TorchSharp.Modules;
using LayerNorm = TorchSharp.Modules.LayerNorm;
using Linear = Microsoft.ML.Lora.Models.Layers.Linear;
using Embedding = TorchSharp.Modules.Embedding;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests.Peft;

#pragma warning disable IDE1006 // Hugging Face names
/// <summary>A small GPT-2-shaped causal LM (Conv1D c_attn, Linear elsewhere) for tests that do not need the real architectures.</summary>
internal sealed class TinyLm : CausalLm
{
    private readonly TinyTransformer transformer;
    private readonly nn.Module<Tensor, Tensor> lm_head;
    private readonly ModelConfig _config;

    public TinyLm(ModelConfig config, long seed = 1) : base(nameof(TinyLm))
    {
        manual_seed(seed);
        _config = config;
        transformer = new TinyTransformer(config);
        lm_head = new Linear(config.HiddenSize, config.VocabSize, hasBias: false);
        RegisterComponents();
        // The library's layers draw their default initialisation from an unseeded generator, never torch's global one:
        // redraw them from the seed so the model depends on it alone.
        using var generator = new TorchSharp.torch.Generator((ulong)seed);
        foreach (var m in modules())
            if (m is Linear l) Microsoft.ML.Lora.Training.Rng.KaimingUniform(l.weight, Math.Sqrt(5), generator);
            else if (m is Conv1D c) Microsoft.ML.Lora.Training.Rng.Normal(c.weight, 0.02, generator);
    }

    public static ModelConfig MakeConfig(int hidden = 32, int layers = 2, int heads = 4, int vocab = 64, int context = 64) => new()
    {
        ModelType = "gpt2", VocabSize = vocab, HiddenSize = hidden, NumLayers = layers, NumHeads = heads, NumKeyValueHeads = heads,
        HeadDim = hidden / heads, IntermediateSize = 4 * hidden, MaxPositionEmbeddings = context, EosTokenId = 2, PadTokenId = 0,
    };

    public override ModelConfig Config => _config;

    public override Tensor Embed(Tensor inputIds) => transformer.Embed(inputIds);

    internal override Tensor ForwardHidden(Tensor inputsEmbeds, Tensor? attentionMask = null, Tensor? positionIds = null, Microsoft.ML.Lora.Generation.KvCache? cache = null) =>
        transformer.forward(inputsEmbeds);

    internal override Tensor LmHead(Tensor hiddenStates) => lm_head.forward(hiddenStates);

    private sealed class TinyTransformer : nn.Module<Tensor, Tensor>
    {
        private readonly Embedding wte;
        private readonly ModuleList<Block> h;
        private readonly LayerNorm ln_f;

        public TinyTransformer(ModelConfig c) : base(nameof(TinyTransformer))
        {
            wte = nn.Embedding(c.VocabSize, c.HiddenSize);
            h = nn.ModuleList(Enumerable.Range(0, c.NumLayers).Select(_ => new Block(c)).ToArray());
            ln_f = nn.LayerNorm(c.HiddenSize);
            RegisterComponents();
        }

        public Tensor Embed(Tensor ids) => wte.forward(ids);

        public override Tensor forward(Tensor x)
        {
            foreach (var b in h) x = b.forward(x);
            return ln_f.forward(x);
        }
    }

    private sealed class Block : nn.Module<Tensor, Tensor>
    {
        private readonly Attn attn;
        private readonly Mlp mlp;
        public Block(ModelConfig c) : base(nameof(Block)) { attn = new Attn(c); mlp = new Mlp(c); RegisterComponents(); }
        public override Tensor forward(Tensor x) { x = x + attn.forward(x); return x + mlp.forward(x); }
    }

    private sealed class Attn : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> c_attn;
        private readonly nn.Module<Tensor, Tensor> c_proj;
        private readonly int _heads;
        public Attn(ModelConfig c) : base(nameof(Attn))
        {
            c_attn = new Conv1D(c.HiddenSize, 3 * c.HiddenSize);
            c_proj = new Conv1D(c.HiddenSize, c.HiddenSize);
            _heads = c.NumHeads;
            RegisterComponents();
        }
        public override Tensor forward(Tensor x)
        {
            long b = x.shape[0], t = x.shape[1], hd = x.shape[2] / _heads;
            var qkv = c_attn.forward(x).chunk(3, -1);
            Tensor Split(Tensor y) => y.view(b, t, _heads, hd).transpose(1, 2);
            var o = nn.functional.scaled_dot_product_attention(Split(qkv[0]), Split(qkv[1]), Split(qkv[2]), is_casual: true);
            return c_proj.forward(o.transpose(1, 2).reshape(b, t, -1));
        }
    }

    private sealed class Mlp : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> c_fc;
        private readonly nn.Module<Tensor, Tensor> c_proj;
        public Mlp(ModelConfig c) : base(nameof(Mlp))
        {
            c_fc = new Linear(c.HiddenSize, c.IntermediateSize);
            c_proj = new Linear(c.IntermediateSize, c.HiddenSize);
            RegisterComponents();
        }
        public override Tensor forward(Tensor x) => c_proj.forward(nn.functional.gelu(c_fc.forward(x)));
    }
}
