using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.ML.Lora.Models;

namespace Microsoft.ML.Lora;

/// <summary>
/// Writes a tiny Hugging Face model folder with random weights (config.json, model.safetensors) and a byte-level
/// tokenizer (tokenizer.json: the 256 byte symbols plus <c>&lt;|endoftext|&gt;</c>, no merges; tokenizer_config.json),
/// for tests, samples and smoke runs without a download. Its generations are meaningless until it is trained.
/// </summary>
public static class TinyBaseModel
{
    /// <summary>The end-of-text token, id 256 (the last id of the vocabulary).</summary>
    public const string EndOfText = "<|endoftext|>";

    /// <summary>Vocabulary size of the byte-level tokenizer: 256 bytes + <see cref="EndOfText"/>.</summary>
    public const int VocabSize = 257;

    /// <summary>
    /// Creates (or overwrites) the model files in <paramref name="folder"/>; <paramref name="modelType"/> is any supported
    /// model_type ("bloom", "gpt2", "llama", "qwen2", ...). Returns <paramref name="folder"/>.
    /// </summary>
    public static string Create(string folder, string modelType = "bloom", int hiddenSize = 64, int layers = 2, int heads = 4, int seed = 0)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        var architecture = Architectures.Find(modelType)
            ?? throw new ArgumentException($"modelType must be one of {string.Join(", ", Architectures.ModelTypes.Select(t => $"\"{t}\""))}, got \"{modelType}\".", nameof(modelType));
        Directory.CreateDirectory(folder);
        const int eos = VocabSize - 1;
        var json = new JsonObject
        {
            ["model_type"] = modelType,
            ["architectures"] = new JsonArray(architecture.ClassName),
            ["vocab_size"] = VocabSize,
            ["bos_token_id"] = eos,
            ["eos_token_id"] = eos,
            ["pad_token_id"] = eos,
        };
        architecture.TinyConfig(json, (hiddenSize, layers, heads));
        var config = ModelConfig.Parse(json, "tiny " + modelType);
        using (var model = ModelFactory.CreateRandom(config, seed))
        {
            // A trainable scale instead of N(0, 0.02): with tied embeddings that small, the logits of a tiny model stay
            // near uniform whatever the adapter does. Embeddings N(0, (1.5 / sqrt(hidden))^2): logits start with a
            // standard deviation near 1.5 and can reach about 1.5 sqrt(hidden); projections N(0, 1/fan_in).
            // A private generator: the weights depend on the seed alone, not on what drew from torch's global one before.
            var owners = model.named_modules().ToDictionary(m => m.name, m => m.module);
            using (var generator = new TorchSharp.torch.Generator((ulong)seed))
            using (TorchSharp.torch.no_grad())
                foreach (var (name, p) in model.named_parameters())
                {
                    if (p.dim() < 2) continue;
                    var owner = owners[name[..Math.Max(0, name.LastIndexOf('.'))]];
                    double std = owner is Models.Layers.ILinear linear ? 1.0 / Math.Sqrt(linear.InFeatures) : 1.5 / Math.Sqrt(hiddenSize);
                    p.normal_(0, std, generator);
                }
            ModelFactory.Save(model, folder);
        }

        var vocab = new JsonObject();
        var symbols = ByteSymbols();
        for (int i = 0; i < symbols.Count; i++) vocab[symbols[i]] = i;
        vocab[EndOfText] = eos;
        var tokenizer = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(new JsonObject
            {
                ["id"] = eos, ["content"] = EndOfText, ["single_word"] = false, ["lstrip"] = false, ["rstrip"] = false,
                ["normalized"] = false, ["special"] = true,
            }),
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true },
            ["post_processor"] = null,
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = true, ["trim_offsets"] = true, ["use_regex"] = true },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = null,
                ["end_of_word_suffix"] = null, ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false,
                ["vocab"] = vocab, ["merges"] = new JsonArray(),
            },
        };
        var indented = new JsonSerializerOptions { WriteIndented = true };
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), tokenizer.ToJsonString(indented));
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), new JsonObject
        {
            ["tokenizer_class"] = "PreTrainedTokenizerFast",
            ["bos_token"] = EndOfText,
            ["eos_token"] = EndOfText,
            ["pad_token"] = EndOfText,
            ["model_max_length"] = 512,
            ["add_prefix_space"] = false,
        }.ToJsonString(indented));
        return folder;
    }

    /// <summary>GPT-2's bytes_to_unicode in byte order: printable bytes stand for themselves, the others map to 256 + n.</summary>
    private static List<string> ByteSymbols()
    {
        var list = new List<string>(256);
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            list.Add(((char)(printable ? b : 256 + n++)).ToString());
        }
        return list;
    }
}
