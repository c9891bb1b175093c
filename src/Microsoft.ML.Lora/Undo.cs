namespace Microsoft.ML.Lora;

/// <summary>
/// Runs an action when disposed: the end of a scoped setting (<c>using (peft.DisableAdapter()) { ... }</c>), which
/// puts back what the scope changed.
/// </summary>
internal sealed class Undo(Action undo) : IDisposable
{
    /// <inheritdoc/>
    public void Dispose() => undo();
}
