using Microsoft.ML;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.MLNet;
using Microsoft.ML.Runtime;

[assembly: LoadableClass(typeof(LoraTokenizeTransformer), typeof(LoraTokenizeModelFormat), null, typeof(SignatureLoadModel),
    LoraTokenizeModelFormat.UserName, LoraTokenizeModelFormat.LoaderSignature)]

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// Save and load of <see cref="LoraTokenizeTransformer"/> inside an ML.NET model zip, the same route as
/// <see cref="LoraCausalLmModelFormat"/>. Layout: Model.key (header, then output column, input column, add-special-tokens
/// flag) and BaseModel.json (folder and fingerprint of the base model; checked on load).
/// </summary>
internal static class LoraTokenizeModelFormat
{
    public const string LoaderSignature = "LoraTokenizeTransformer";
    public const string UserName = "LoRA Tokenize Transformer";

    private static VersionInfo GetVersionInfo() => new(
        modelSignature: "LORATOKT",
        verWrittenCur: 0x00010001, // Initial.
        verReadableCur: 0x00010001,
        verWeCanReadBack: 0x00010001,
        loaderSignature: LoaderSignature,
        loaderAssemblyName: typeof(LoraTokenizeModelFormat).Assembly.FullName);

    public static void Save(ModelSaveContext ctx, LoraTokenizeTransformer transformer)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        if (!ctx.InRepository)
            throw new InvalidOperationException($"{UserName} can only be saved into a model zip (mlContext.Model.Save).");
        ctx.CheckAtModel();
        ctx.SetVersionInfo(GetVersionInfo());

        // *** Binary format ***
        // string: output column name
        // string: input column name
        // bool: add special tokens
        ctx.Writer.Write(transformer.OutputColumnName);
        ctx.Writer.Write(transformer.InputColumnName);
        ctx.Writer.Write(transformer.AddSpecialTokens);
        transformer.BaseModel.Save(ctx);
    }

    // Found by ML.NET through the LoadableClass entry above.
    private static LoraTokenizeTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(ctx);
        ctx.CheckAtModel(GetVersionInfo());

        string output = ctx.Reader.ReadString();
        string input = ctx.Reader.ReadString();
        bool addSpecialTokens = ctx.Reader.ReadBoolean();
        var baseModel = BaseModelReference.Load(ctx, UserName).Resolve(ModelLoadOverrides.Current);
        baseModel.Verify();
        return new LoraTokenizeTransformer(env, baseModel, output, input, addSpecialTokens);
    }
}
