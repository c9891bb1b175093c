namespace Microsoft.ML.Lora;

/// <summary>
/// Base of the exceptions this library throws for bad input it cannot use: a model or adapter folder, a tensor, a
/// configuration field. The message names what was wrong and what was expected; <see cref="FilePath"/> names the
/// file when there is one. Invalid arguments given in code are <see cref="ArgumentException"/>s, as in .NET.
/// </summary>
public class LoraException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What was wrong and what was expected.</param>
    /// <param name="filePath">The file concerned, if any.</param>
    /// <param name="innerException">The lower-level error, if any.</param>
    public LoraException(string message, string? filePath = null, Exception? innerException = null) : base(message, innerException) => FilePath = filePath;

    /// <summary>The file the error is about, or null.</summary>
    public string? FilePath { get; }
}

/// <summary>A model folder (config.json, *.safetensors, tokenizer files) cannot be loaded or does not fit the architecture.</summary>
public sealed class ModelLoadException : LoraException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What was wrong and what was expected.</param>
    /// <param name="filePath">The file concerned, if any.</param>
    /// <param name="tensorName">The tensor concerned, if any.</param>
    /// <param name="innerException">The lower-level error, if any.</param>
    public ModelLoadException(string message, string? filePath = null, string? tensorName = null, Exception? innerException = null)
        : base(message, filePath, innerException) => TensorName = tensorName;

    /// <summary>The checkpoint tensor the error is about, or null.</summary>
    public string? TensorName { get; }
}

/// <summary>An adapter folder (adapter_model.safetensors) does not fit the model: a key missing or unexpected, or a shape differs.</summary>
public sealed class AdapterLoadException : LoraException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What was wrong and what was expected.</param>
    /// <param name="filePath">The file concerned, if any.</param>
    /// <param name="tensorName">The saved key concerned, if any.</param>
    /// <param name="innerException">The lower-level error, if any.</param>
    public AdapterLoadException(string message, string? filePath = null, string? tensorName = null, Exception? innerException = null)
        : base(message, filePath, innerException) => TensorName = tensorName;

    /// <summary>The saved key the error is about (<c>base_model.model....lora_A.weight</c>), or null.</summary>
    public string? TensorName { get; }
}

/// <summary>A field of a configuration file (adapter_config.json, config.json) is missing, of the wrong type, or not supported.</summary>
public sealed class PeftConfigException : LoraException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What was wrong and what was expected.</param>
    /// <param name="filePath">The file concerned, if any.</param>
    /// <param name="field">The JSON field concerned, if any.</param>
    /// <param name="innerException">The lower-level error, if any.</param>
    public PeftConfigException(string message, string? filePath = null, string? field = null, Exception? innerException = null)
        : base(message, filePath, innerException) => Field = field;

    /// <summary>The JSON field the error is about (<c>peft_type</c>, <c>r</c>, ...), or null.</summary>
    public string? Field { get; }
}

/// <summary>
/// A row of the data given to an ML.NET estimator or transformer cannot be used: its prompt does not fit the model's
/// context, a token id is outside the vocabulary, or its text cannot be tokenized. The message names the row and the
/// column, what was wrong and what was expected.
/// </summary>
public sealed class DataRowException : LoraException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="message">What was wrong and what was expected, naming the row and the column.</param>
    /// <param name="row">The row (counted from 0 in the order the cursor read them), or null when unknown (a PredictionEngine's single row).</param>
    /// <param name="columnName">The column concerned.</param>
    /// <param name="innerException">The lower-level error, if any.</param>
    public DataRowException(string message, long? row, string columnName, Exception? innerException = null)
        : base(message, null, innerException)
    {
        Row = row;
        ColumnName = columnName;
    }

    /// <summary>The row (counted from 0), or null when unknown.</summary>
    public long? Row { get; }

    /// <summary>The column concerned.</summary>
    public string ColumnName { get; }
}
