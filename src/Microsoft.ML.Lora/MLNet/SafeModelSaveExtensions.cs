using Microsoft.ML.Data;
using Microsoft.ML.Lora.Checkpoints;

namespace Microsoft.ML;

/// <summary>A model save that cannot lose the previous model file: <c>mlContext.Model.SaveAtomically(...)</c>.</summary>
public static class SafeModelSaveExtensions
{
    /// <summary>
    /// Saves <paramref name="model"/> and <paramref name="inputSchema"/> to <paramref name="filePath"/> like
    /// <see cref="ModelOperationsCatalog.Save(ITransformer, DataViewSchema, string)"/>, but through a temporary file
    /// in the same folder that is flushed to disk and then renamed over the old file. A kill, a crash or a full disk
    /// during the save leaves the previous model at <paramref name="filePath"/> loadable; only a complete new model
    /// ever replaces it. (ML.NET's path overload truncates the file first, so an interrupted save there destroys the
    /// old model.) Temporaries left by killed saves are removed by the next save to the same path.
    /// </summary>
    /// <param name="catalog">The model operations catalog, <c>mlContext.Model</c>.</param>
    /// <param name="model">The trained model to save.</param>
    /// <param name="inputSchema">The schema of the model's input, as for ML.NET's Save (may be null).</param>
    /// <param name="filePath">The model zip to write or replace.</param>
    public static void SaveAtomically(this ModelOperationsCatalog catalog, ITransformer model, DataViewSchema inputSchema, string filePath)
    {
        ArgumentNullException.ThrowIfNull(catalog);
        ArgumentException.ThrowIfNullOrEmpty(filePath);
        AtomicFile.Write(filePath, stream => catalog.Save(model, inputSchema, stream));
    }
}
