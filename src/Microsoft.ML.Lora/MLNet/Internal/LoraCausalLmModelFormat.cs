using System.Text.Json;
using Microsoft.ML;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.MLNet;
using Microsoft.ML.Runtime;

[assembly: LoadableClass(typeof(LoraCausalLmTransformer), typeof(LoraCausalLmModelFormat), null, typeof(SignatureLoadModel),
    LoraCausalLmModelFormat.UserName, LoraCausalLmModelFormat.LoaderSignature)]

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// Save and load of <see cref="LoraCausalLmTransformer"/> inside an ML.NET model zip, with ML.NET's own (internal)
/// machinery, as Microsoft.ML.TorchSharp's transformers do: a LoadableClass entry lets <c>mlContext.Model.Load</c> find
/// <see cref="Create"/> from the loader signature in the zip, in any process that has this assembly.
/// Layout under the transformer's folder of the zip:
/// <list type="bullet">
/// <item>Model.key: header and version, then the backend name and the list of adapter files;</item>
/// <item>Options.json: the <see cref="LoraCausalLmOptions"/> (columns, LoRA, training and generation settings);</item>
/// <item>BaseModel.json: folder and fingerprint of the base model;</item>
/// <item>Adapter/NAME: the PEFT adapter files (adapter_config.json, adapter_model.safetensors), byte for byte.</item>
/// </list>
/// </summary>
internal static class LoraCausalLmModelFormat
{
    public const string LoaderSignature = "LoraCausalLmTransformer";
    public const string UserName = "LoRA Causal LM Transformer";
    private const string AdapterPrefix = "Adapter/";
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    private static VersionInfo GetVersionInfo() => new(
        modelSignature: "LORACLMT",
        verWrittenCur: 0x00010001, // Initial.
        verReadableCur: 0x00010001,
        verWeCanReadBack: 0x00010001,
        loaderSignature: LoaderSignature,
        loaderAssemblyName: typeof(LoraCausalLmModelFormat).Assembly.FullName);

    public static void Save(ModelSaveContext ctx, LoraCausalLmTransformer transformer)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        if (!ctx.InRepository)
            throw new InvalidOperationException($"{UserName} can only be saved into a model zip (mlContext.Model.Save).");
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());

        string adapter = TempFolder.Create();
        try
        {
            transformer.Generator.SaveAdapter(adapter);
            var files = Directory.GetFiles(adapter).Select(Path.GetFileName).Order(StringComparer.Ordinal).ToList();

            // *** Binary format ***
            // string: backend (ITextGeneratorFactory type name)
            // int: number of adapter files, then each file name (string)
            ctx.Writer.Write(TextGeneratorFactories.NameOf(transformer.Factory));
            ctx.Writer.Write(files.Count);
            foreach (var name in files)
                ctx.Writer.Write(name!);

            ctx.SaveTextStream("Options.json", w => w.Write(JsonSerializer.Serialize(transformer.Options, Json)));
            transformer.BaseModel.Save(ctx);
            foreach (var name in files)
            {
                ctx.SaveBinaryStream(AdapterPrefix + name, w =>
                {
                    w.Flush();
                    using var file = File.OpenRead(Path.Combine(adapter, name!));
                    file.CopyTo(w.BaseStream);
                });
            }
        }
        finally
        {
            TempFolder.Delete(adapter);
        }
    }

    // Found by ML.NET through the LoadableClass entry above.
    private static LoraCausalLmTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(ctx);
        ctx.CheckAtModel(GetVersionInfo());

        string backend = ctx.Reader.ReadString();
        int count = ctx.Reader.ReadInt32();
        if (count < 0 || count > 4096) throw new InvalidDataException($"Bad adapter file count {count} in {UserName}.");
        var files = new List<string>(count);
        for (int i = 0; i < count; i++)
        {
            string name = ctx.Reader.ReadString();
            if (name.Length == 0 || name != Path.GetFileName(name) || name is "." or "..")
                throw new InvalidDataException($"Bad adapter file name '{name}' in {UserName}.");
            files.Add(name);
        }

        var options = JsonSerializer.Deserialize<LoraCausalLmOptions>(LoadText(ctx, "Options.json"), Json)
            ?? throw new InvalidDataException($"Options.json of {UserName} is empty.");
        var overrides = ModelLoadOverrides.Current;
        var baseModel = BaseModelReference.Load(ctx, UserName).Resolve(overrides);
        options.BaseModelFolder = baseModel.Folder;
        if (overrides?.Device is { } device) options.Device = device;
        baseModel.Verify();

        var factory = TextGeneratorFactories.FromName(backend);
        string adapter = TempFolder.Create();
        try
        {
            foreach (var name in files)
            {
                bool found = ctx.TryLoadBinaryStream(AdapterPrefix + name, r =>
                {
                    using var file = File.Create(Path.Combine(adapter, name));
                    r.BaseStream.CopyTo(file);
                });
                if (!found) throw new InvalidDataException($"The adapter file '{name}' is missing from the {UserName} model.");
            }
            ITextGenerator generator;
            try { generator = factory.Load(options, adapter); }
            catch (Exception e) when (e is IOException or InvalidDataException or ArgumentException or FormatException or KeyNotFoundException)
            {
                // The adapter was copied into a temporary folder deleted below: name the zip's entries instead.
                throw new InvalidDataException($"The adapter stored in the {UserName} model (entries {string.Join(", ", files.Select(f => AdapterPrefix + f))}) " +
                    $"does not load onto the base model '{baseModel.Folder}': {e.Message.Replace(adapter, "<adapter>", StringComparison.Ordinal)}", e);
            }
            return new LoraCausalLmTransformer(env, options, baseModel, factory, generator);
        }
        finally
        {
            TempFolder.Delete(adapter);
        }
    }

    private static string LoadText(ModelLoadContext ctx, string name)
    {
        string? text = null;
        if (!ctx.TryLoadTextStream(name, r => text = r.ReadToEnd()) || text == null)
            throw new InvalidDataException($"'{name}' is missing from the {UserName} model.");
        return text;
    }
}
