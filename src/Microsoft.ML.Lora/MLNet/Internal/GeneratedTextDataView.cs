using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// The input data view plus a generated text column. Nothing is generated until a cursor reads that column; then the
/// prompts of the next <see cref="LoraGenerationOptions.BatchSize"/> rows are generated together. A second cursor over
/// the prompt column runs ahead of the row cursor, which relies on IDataView's rule that cursors without a random
/// source see the rows in the same order.
/// </summary>
internal sealed class GeneratedTextDataView : IDataView
{
    private readonly IDataView _input;
    private readonly SharedTextGenerator _generator;
    private readonly int _promptIndex;
    private readonly Func<int> _batchSize;
    private readonly bool _tokens;

    public GeneratedTextDataView(IDataView input, SharedTextGenerator generator, int promptIndex, string outputColumnName, Func<int> batchSize, bool tokens = false)
    {
        _tokens = tokens;
        _input = input;
        _generator = generator;
        _promptIndex = promptIndex;
        _batchSize = batchSize;
        Schema = AppendedColumn.Schema(input.Schema, outputColumnName, TextDataViewType.Instance);
    }

    public bool CanShuffle => false;

    public DataViewSchema Schema { get; }

    public long? GetRowCount() => _input.GetRowCount();

    public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
    {
        var needed = columnsNeeded.Select(c => c.Index).ToHashSet();
        bool outputActive = needed.Contains(Schema.Count - 1);
        var inputColumns = _input.Schema.Where(c => needed.Contains(c.Index));
        var rows = _input.GetRowCursor(inputColumns);
        DataViewRowCursor? prompts = outputActive ? _input.GetRowCursor(new[] { _input.Schema[_promptIndex] }) : null;
        return new Cursor(this, rows, prompts, needed);
    }

    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
        new[] { GetRowCursor(columnsNeeded, rand) };

    private sealed class Cursor : DataViewRowCursor
    {
        private readonly GeneratedTextDataView _parent;
        private readonly DataViewRowCursor _rows;
        private readonly DataViewRowCursor? _prompts;
        private readonly Func<PromptInput>? _promptGetter;
        private readonly HashSet<int> _active;
        private SharedTextGenerator.Lease? _lease;
        private IReadOnlyList<string> _batch = Array.Empty<string>();
        private long _batchStart;
        private readonly int _batchSize;

        public Cursor(GeneratedTextDataView parent, DataViewRowCursor rows, DataViewRowCursor? prompts, HashSet<int> active)
        {
            _parent = parent;
            _batchSize = Math.Max(1, parent._batchSize()); // the transformer's setting when the cursor was made
            _rows = rows;
            _prompts = prompts;
            _active = active;
            if (prompts != null)
            {
                _promptGetter = PromptReader.Create(prompts, parent._promptIndex, parent._tokens);
                _lease = parent._generator.Acquire();
            }
        }

        public override DataViewSchema Schema => _parent.Schema;

        public override long Position => _rows.Position;

        public override long Batch => 0;

        public override bool MoveNext() => _rows.MoveNext();

        public override ValueGetter<DataViewRowId> GetIdGetter() => _rows.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column column) => _active.Contains(column.Index);

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            if (!IsColumnActive(column))
                throw new InvalidOperationException($"Column '{column.Name}' is not active in this cursor.");
            if (column.Index < _parent._input.Schema.Count)
                return _rows.GetGetter<TValue>(_rows.Schema[column.Index]);
            if (typeof(TValue) != typeof(ReadOnlyMemory<char>))
                throw new InvalidOperationException($"Column '{column.Name}' is of type {TextDataViewType.Instance}, not {typeof(TValue).Name}.");
            ValueGetter<ReadOnlyMemory<char>> getter = (ref ReadOnlyMemory<char> value) => value = Current().AsMemory();
            return (ValueGetter<TValue>)(Delegate)getter;
        }

        private string Current()
        {
            long position = _rows.Position;
            if (position < 0) throw new InvalidOperationException("The cursor is not on a row.");
            if (position < _batchStart || position >= _batchStart + _batch.Count)
                FillBatch(position);
            return _batch[(int)(position - _batchStart)];
        }

        private void FillBatch(long position)
        {
            var prompts = _prompts!;
            if (prompts.Position >= position)
                throw new InvalidOperationException("Rows of a generated text column must be read in order.");
            while (prompts.Position < position - 1)
                if (!prompts.MoveNext()) throw new InvalidOperationException("The prompt cursor ended before the row cursor.");
            var batch = new List<PromptInput>(_batchSize);
            while (batch.Count < _batchSize && prompts.MoveNext())
                batch.Add(_promptGetter!());
            if (batch.Count == 0) throw new InvalidOperationException("The prompt cursor ended before the row cursor.");
            _batch = _lease!.Generate(batch);
            _batchStart = position;
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _rows.Dispose();
                _prompts?.Dispose();
                Interlocked.Exchange(ref _lease, null)?.Dispose();
            }
            base.Dispose(disposing);
        }
    }
}
