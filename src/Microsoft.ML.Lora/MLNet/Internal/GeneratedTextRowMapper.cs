using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// Row-to-row form of the transformer, used by PredictionEngine: generates the completion of one row's prompt when
/// the output column is read, once per row position. Its rows borrow the shared generator without counting (ML.NET never disposes an engine's rows; see <see cref="SharedTextGenerator"/>).
/// </summary>
internal sealed class GeneratedTextRowMapper : IRowToRowMapper
{
    private readonly SharedTextGenerator _generator;
    private readonly int _promptIndex;
    private readonly bool _tokens;

    public GeneratedTextRowMapper(DataViewSchema inputSchema, SharedTextGenerator generator, int promptIndex, string outputColumnName, bool tokens = false)
    {
        _tokens = tokens;
        InputSchema = inputSchema;
        _generator = generator;
        _promptIndex = promptIndex;
        OutputSchema = AppendedColumn.Schema(inputSchema, outputColumnName, TextDataViewType.Instance);
    }

    public DataViewSchema InputSchema { get; }

    public DataViewSchema OutputSchema { get; }

    public IEnumerable<DataViewSchema.Column> GetDependencies(IEnumerable<DataViewSchema.Column> dependingColumns) =>
        AppendedColumn.Dependencies(InputSchema, _promptIndex, dependingColumns.Select(c => c.Index));

    public DataViewRow GetRow(DataViewRow input, IEnumerable<DataViewSchema.Column> activeColumns)
    {
        var active = activeColumns.Select(c => c.Index).ToHashSet();
        bool outputActive = active.Contains(OutputSchema.Count - 1);
        return new Row(this, input, active, outputActive ? _generator.Borrow() : null);
    }

    private sealed class Row : DataViewRow
    {
        private readonly GeneratedTextRowMapper _parent;
        private readonly DataViewRow _input;
        private readonly HashSet<int> _active;
        private SharedTextGenerator.Lease? _lease;
        private readonly Func<PromptInput>? _promptGetter;
        private long _cachedPosition = -1;
        private string _cached = "";

        public Row(GeneratedTextRowMapper parent, DataViewRow input, HashSet<int> active, SharedTextGenerator.Lease? lease)
        {
            _parent = parent;
            _input = input;
            _active = active;
            _lease = lease;
            if (lease != null)
                _promptGetter = PromptReader.Create(input, parent._promptIndex, parent._tokens);
        }

        public override DataViewSchema Schema => _parent.OutputSchema;

        public override long Position => _input.Position;

        public override long Batch => _input.Batch;

        public override ValueGetter<DataViewRowId> GetIdGetter() => _input.GetIdGetter();

        public override bool IsColumnActive(DataViewSchema.Column column) => _active.Contains(column.Index);

        public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
        {
            if (column.Index < _parent.InputSchema.Count)
                return _input.GetGetter<TValue>(_input.Schema[column.Index]);
            if (_lease == null)
                throw new InvalidOperationException($"Column '{column.Name}' is not active in this row.");
            if (typeof(TValue) != typeof(ReadOnlyMemory<char>))
                throw new InvalidOperationException($"Column '{column.Name}' is of type {TextDataViewType.Instance}, not {typeof(TValue).Name}.");
            ValueGetter<ReadOnlyMemory<char>> getter = (ref ReadOnlyMemory<char> value) => value = Current().AsMemory();
            return (ValueGetter<TValue>)(Delegate)getter;
        }

        private string Current()
        {
            // PredictionEngine keeps one input row and moves its position on every Predict call.
            if (_cachedPosition != _input.Position || _input.Position < 0)
            {
                try { _cached = _lease!.Generate(new[] { _promptGetter!() })[0]; }
                catch (PromptException e) { throw e.At(null, _parent.InputSchema[_parent._promptIndex].Name); }
                _cachedPosition = _input.Position;
            }
            return _cached;
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
                Interlocked.Exchange(ref _lease, null)?.Dispose();
            base.Dispose(disposing);
        }
    }
}
