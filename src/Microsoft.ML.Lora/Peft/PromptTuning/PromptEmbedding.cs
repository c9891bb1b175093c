using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Peft;

/// <summary>
/// Prompt tuning's encoder (PEFT's <c>PromptEmbedding</c>): one learned row per virtual token,
/// <c>embedding.weight</c> (num_virtual_tokens, token_dim). Also the form in which any prompt-learning adapter is
/// loaded from a folder: the saved <c>prompt_embeddings</c> become its rows.
/// </summary>
internal sealed class PromptEmbedding : nn.Module, IPromptEncoder
{
#pragma warning disable IDE1006 // PEFT's name
    public Models.Layers.Embedding embedding;
#pragma warning restore IDE1006

    public PromptEmbedding(Models.Layers.Embedding rows) : base(nameof(PromptEmbedding))
    {
        embedding = rows;
        RegisterComponents();
    }

    /// <summary>PEFT's init: RANDOM draws N(0, 1); TEXT and SAMPLE_VOCAB copy rows of the model's input embedding matrix.</summary>
    public static PromptEmbedding Create(PromptTuningConfig c, Func<Tensor, Tensor> embed, long vocabSize, torch.Generator generator)
    {
        c.Validate();
        int n = c.NumVirtualTokens;
        var e = PromptEncoderInit.Embedding(n, c.TokenDim!.Value, generator);
        long[]? ids = c.PromptTuningInit switch
        {
            PromptTuningInit.Text => TextIds(c),
            PromptTuningInit.SampleVocab => randint(vocabSize, [n], generator: generator).data<long>().ToArray(),
            _ => null,
        };
        if (ids is not null)
        {
            if (ids.Where(i => i < 0 || i >= vocabSize).Select(i => (long?)i).FirstOrDefault() is long bad)
                throw new ArgumentException($"Prompt tuning init: token id {bad} is outside the model's vocabulary of {vocabSize} (tokenizer '{c.TokenizerNameOrPath}' does not fit the model?).");
            using var no = no_grad();
            using var scope = NewDisposeScope();
            // PEFT: word_embeddings(ids), copied in float32.
            e.weight!.copy_(embed(tensor(ids, device: e.weight!.device).unsqueeze(0))[0].to(ScalarType.Float32));
        }
        return new PromptEmbedding(e);
    }

    /// <summary>PEFT's TEXT rule: the init text's ids (with the tokenizer's special tokens), repeated until there are n, cut to n.</summary>
    internal static long[] TextIds(PromptTuningConfig c)
    {
        var tokenizer = Tokenization.HfTokenizer.Load(c.TokenizerNameOrPath!);
        var ids = tokenizer.Encode(c.PromptTuningInitText!);
        if (ids.Length == 0) throw new ArgumentException($"PromptTuningConfig.PromptTuningInitText '{c.PromptTuningInitText}' gives no tokens.");
        return [.. Enumerable.Range(0, c.NumVirtualTokens).Select(i => (long)ids[i % ids.Length])];
    }

    public Tensor Output() => embedding.weight!.alias();
}
