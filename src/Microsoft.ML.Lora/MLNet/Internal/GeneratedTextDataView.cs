using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// The input data view plus a generated text column. Nothing is generated until a cursor reads that column; then the
/// prompts of the next <see cref="LoraGenerationOptions.BatchSize"/> rows are generated together. The cursor reads
/// every row once: to batch, it reads ahead on its own input cursor and keeps the values of the rows read ahead
/// (<see cref="RowBuffer"/>), so each completion belongs to the row whose prompt it was made from, whatever order
/// the input gives its rows on each cursor (a second cursor over the prompts, as before, put the completions of a
/// shuffling loader on the wrong rows).
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
        var inputColumns = _input.Schema.Where(c => needed.Contains(c.Index) || (outputActive && c.Index == _promptIndex));
        return new Cursor(this, _input.GetRowCursor(inputColumns), needed, outputActive);
    }

    public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
        new[] { GetRowCursor(columnsNeeded, rand) };

    /// <summary>
    /// Passes the input rows through; when the generated column is read on a row that is not yet generated, it reads
    /// that row's prompt and those of the next rows (moving the input cursor ahead, keeping their values), generates
    /// them as one batch, and serves those rows from the kept values.
    /// </summary>
    private sealed class Cursor : DataViewRowCursor
    {
        private readonly GeneratedTextDataView _parent;
        private readonly DataViewRowCursor _rows;
        private readonly HashSet<int> _active;
        private readonly int _batchSize;
        private readonly Func<PromptInput>? _promptGetter;
        private readonly RowBuffer? _buffer;
        private SharedTextGenerator.Lease? _lease;
        private readonly List<PromptInput> _prompts = new();
        private IReadOnlyList<string> _generated = Array.Empty<string>();
        private int _buffered; // rows held by _buffer (0: the cursor reads _rows directly)
        private int _slot = -1; // the current row's slot in _buffer, or -1
        private long _position = -1;
        private bool _inputDone; // _rows returned false
        private bool _ended; // this cursor returned false

        public Cursor(GeneratedTextDataView parent, DataViewRowCursor rows, HashSet<int> active, bool outputActive)
        {
            _parent = parent;
            _batchSize = Math.Max(1, parent._batchSize()); // the transformer's setting when the cursor was made
            _rows = rows;
            _active = active;
            if (outputActive)
            {
                _promptGetter = PromptReader.Create(rows, parent._promptIndex, parent._tokens);
                _buffer = new RowBuffer(rows, active.Where(i => i < parent._input.Schema.Count), _batchSize);
                _lease = parent._generator.Acquire();
            }
        }

        public override DataViewSchema Schema => _parent.Schema;

        public override long Position => _position;

        public override long Batch => 0;

        public override bool MoveNext()
        {
            if (_slot >= 0 && _slot + 1 < _buffered)
            {
                _slot++;
                _position++;
                return true;
            }
            _slot = -1;
            _buffered = 0;
            if (_inputDone || !_rows.MoveNext())
            {
                _inputDone = _ended = true;
                return false;
            }
            _position++;
            return true;
        }

        public override ValueGetter<DataViewRowId> GetIdGetter()
        {
            var live = _rows.GetIdGetter();
            if (_buffer is null) return live;
            return (ref DataViewRowId value) =>
            {
                if (_slot >= 0) _buffer.GetId(_slot, ref value);
                else live(ref value);
            };
        }

        public override bool IsColumnActive(DataViewSchema.Column column) => _active.Contains(column.Index);

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            if (!IsColumnActive(column))
                throw new InvalidOperationException($"Column '{column.Name}' is not active in this cursor.");
            if (column.Index < _parent._input.Schema.Count)
            {
                var live = _rows.GetGetter<TValue>(_rows.Schema[column.Index]);
                if (_buffer is null) return live;
                var buffer = _buffer;
                return (ref TValue value) =>
                {
                    if (_slot >= 0) buffer.Get(column.Index, _slot, ref value);
                    else live(ref value);
                };
            }
            if (typeof(TValue) != typeof(ReadOnlyMemory<char>))
                throw new InvalidOperationException($"Column '{column.Name}' is of type {TextDataViewType.Instance}, not {typeof(TValue).Name}.");
            ValueGetter<ReadOnlyMemory<char>> getter = (ref ReadOnlyMemory<char> value) => value = Current().AsMemory();
            return (ValueGetter<TValue>)(Delegate)getter;
        }

        private string Current()
        {
            if (_position < 0 || _ended) throw new InvalidOperationException("The cursor is not on a row.");
            if (_slot < 0) FillBatch();
            if (_generated.Count != _buffered) Generate(); // again after a failed call
            return _generated[_slot];
        }

        /// <summary>
        /// Keeps the current row and up to <see cref="_batchSize"/> - 1 following ones (their prompts and the active
        /// columns' values) and generates their prompts as one batch. Row r of the batch gets completion r.
        /// </summary>
        private void FillBatch()
        {
            var buffer = _buffer!;
            var prompts = _prompts;
            prompts.Clear();
            _generated = Array.Empty<string>();
            while (true)
            {
                buffer.Capture(prompts.Count);
                prompts.Add(_promptGetter!());
                if (prompts.Count == _batchSize) break;
                if (!_rows.MoveNext())
                {
                    _inputDone = true;
                    break;
                }
            }
            _buffered = prompts.Count;
            _slot = 0;
            Generate();
        }

        /// <summary>Generates the kept prompts; a prompt the generator refuses is named by its row and column.</summary>
        private void Generate()
        {
            try
            {
                _generated = _lease!.Generate(_prompts);
            }
            catch (PromptException e)
            {
                throw e.At(_position - _slot, _parent._input.Schema[_parent._promptIndex].Name);
            }
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _rows.Dispose();
                Interlocked.Exchange(ref _lease, null)?.Dispose();
            }
            base.Dispose(disposing);
        }
    }
}
