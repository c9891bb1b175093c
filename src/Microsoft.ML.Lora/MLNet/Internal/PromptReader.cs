using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>Reads the prompt of the current row of a cursor or row: text, or token ids (vector of Int32).</summary>
internal static class PromptReader
{
    public static Func<PromptInput> Create(DataViewRow row, int index, bool tokens)
    {
        var column = row.Schema[index];
        if (tokens)
        {
            var getter = row.GetGetter<VBuffer<int>>(column);
            var buffer = default(VBuffer<int>);
            return () =>
            {
                getter(ref buffer);
                return new PromptInput("", buffer.DenseValues().ToArray());
            };
        }
        var text = row.GetGetter<ReadOnlyMemory<char>>(column);
        var value = default(ReadOnlyMemory<char>);
        return () =>
        {
            text(ref value);
            return new PromptInput(value.ToString(), null);
        };
    }
}
