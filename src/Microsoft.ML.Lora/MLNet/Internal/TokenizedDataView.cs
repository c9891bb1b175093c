using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// The input data view plus a column of token ids (variable-length vector of Int32) of a text column, computed
/// row by row when read. Also the row-to-row mapper used by PredictionEngine.
/// </summary>
internal sealed class TokenizedDataView : IDataView
{
    private readonly IDataView _input;
    private readonly TokenizedColumn _column;

    public TokenizedDataView(IDataView input, TokenizedColumn column)
    {
        _input = input;
        _column = column;
        Schema = column.OutputSchema(input.Schema);
    }

    public bool CanShuffle => _input.CanShuffle;

    public DataViewSchema Schema { get; }

    public long? GetRowCount() => _input.GetRowCount();

    public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
    {
        var active = columnsNeeded.Select(c => c.Index).ToHashSet();
        var cursor = _input.GetRowCursor(_column.Dependencies(_input.Schema, active), rand);
        return new Cursor(cursor, Schema, _column, active);
    }

    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
        new[] { GetRowCursor(columnsNeeded, rand) };

    private sealed class Cursor(DataViewRowCursor input, DataViewSchema schema, TokenizedColumn column, HashSet<int> active) : DataViewRowCursor
    {
        public override DataViewSchema Schema => schema;

        public override long Position => input.Position;

        public override long Batch => input.Batch;

        public override bool MoveNext() => input.MoveNext();

        public override ValueGetter<DataViewRowId> GetIdGetter() => input.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column c) => active.Contains(c.Index);

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column c) => column.Getter<TValue>(input, c, active);

        protected override void Dispose(bool disposing)
        {
            if (disposing) input.Dispose();
            base.Dispose(disposing);
        }
    }
}

/// <summary>What <see cref="TokenizedDataView"/> and <see cref="TokenizedRowMapper"/> share: the column and its getter.</summary>
internal sealed class TokenizedColumn(IBackendTokenizer tokenizer, int sourceIndex, string outputName, bool addSpecialTokens)
{
    private readonly object _lock = new();

    public DataViewSchema OutputSchema(DataViewSchema input) =>
        AppendedColumn.Schema(input, outputName, new VectorDataViewType(NumberDataViewType.Int32));

    /// <summary>The input columns needed for the active output columns.</summary>
    public IEnumerable<DataViewSchema.Column> Dependencies(DataViewSchema input, IEnumerable<int> active) =>
        AppendedColumn.Dependencies(input, sourceIndex, active);

    public int[] Encode(string text)
    {
        lock (_lock) return tokenizer.Encode(text, addSpecialTokens);
    }

    public ValueGetter<TValue> Getter<TValue>(DataViewRow input, DataViewSchema.Column column, HashSet<int> active)
    {
        if (!active.Contains(column.Index))
            throw new InvalidOperationException($"Column '{column.Name}' is not active.");
        if (column.Index < input.Schema.Count)
            return input.GetGetter<TValue>(input.Schema[column.Index]);
        if (typeof(TValue) != typeof(VBuffer<int>))
            throw new InvalidOperationException($"Column '{column.Name}' is of type {new VectorDataViewType(NumberDataViewType.Int32)}, not {typeof(TValue).Name}.");
        var text = input.GetGetter<ReadOnlyMemory<char>>(input.Schema[sourceIndex]);
        var value = default(ReadOnlyMemory<char>);
        ValueGetter<VBuffer<int>> getter = (ref VBuffer<int> dst) =>
        {
            text(ref value);
            var ids = Encode(value.ToString());
            var editor = VBufferEditor.Create(ref dst, ids.Length);
            ids.CopyTo(editor.Values);
            dst = editor.Commit();
        };
        return (ValueGetter<TValue>)(Delegate)getter;
    }
}

/// <summary>Row-to-row form of the tokenize transformer, used by PredictionEngine.</summary>
internal sealed class TokenizedRowMapper : IRowToRowMapper
{
    private readonly TokenizedColumn _column;

    public TokenizedRowMapper(DataViewSchema inputSchema, TokenizedColumn column)
    {
        InputSchema = inputSchema;
        _column = column;
        OutputSchema = column.OutputSchema(inputSchema);
    }

    public DataViewSchema InputSchema { get; }

    public DataViewSchema OutputSchema { get; }

    public IEnumerable<DataViewSchema.Column> GetDependencies(IEnumerable<DataViewSchema.Column> dependingColumns) =>
        _column.Dependencies(InputSchema, dependingColumns.Select(c => c.Index));

    public DataViewRow GetRow(DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns) =>
        new Row(input, OutputSchema, _column, activeColumns.Select(c => c.Index).ToHashSet());

    private sealed class Row(DataViewRow input, DataViewSchema schema, TokenizedColumn column, HashSet<int> active) : DataViewRow
    {
        public override DataViewSchema Schema => schema;

        public override long Position => input.Position;

        public override long Batch => input.Batch;

        public override ValueGetter<DataViewRowId> GetIdGetter() => input.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column c) => active.Contains(c.Index);

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column c) => column.Getter<TValue>(input, c, active);
    }
}
