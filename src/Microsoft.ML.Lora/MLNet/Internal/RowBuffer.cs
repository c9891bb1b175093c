using Microsoft.ML.Data;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// Copies of the values of some columns (and the row id) of a few consecutive rows of a cursor, so that a cursor can
/// read ahead and still serve the rows it passed. Vectors are copied deeply, so the input cursor may reuse its buffers.
/// </summary>
internal sealed class RowBuffer
{
    private readonly Dictionary<int, Column> _columns = new();
    private readonly ValueGetter<DataViewRowId> _id;
    private readonly DataViewRowId[] _ids;

    /// <param name="row">The cursor read ahead; values are taken from its current row.</param>
    /// <param name="columns">Indices (in <paramref name="row"/>'s schema) of the columns kept.</param>
    /// <param name="capacity">Rows kept at most.</param>
    public RowBuffer(DataViewRow row, IEnumerable<int> columns, int capacity)
    {
        _id = row.GetIdGetter();
        _ids = new DataViewRowId[capacity];
        foreach (int index in columns)
            _columns[index] = Column.Create(row, row.Schema[index], capacity);
    }

    /// <summary>Keeps the values of the current row of the cursor in <paramref name="slot"/>.</summary>
    public void Capture(int slot)
    {
        _id(ref _ids[slot]);
        foreach (var column in _columns.Values) column.Capture(slot);
    }

    public void GetId(int slot, ref DataViewRowId value) => value = _ids[slot];

    /// <summary>The kept value of column <paramref name="index"/> in <paramref name="slot"/>.</summary>
    public void Get<TValue>(int index, int slot, ref TValue value) => ((Column<TValue>)_columns[index]).Get(slot, ref value);

    private abstract class Column
    {
        public abstract void Capture(int slot);

        public static Column Create(DataViewRow row, DataViewSchema.Column column, int capacity)
        {
            var raw = column.Type.RawType;
            var type = raw.IsGenericType && raw.GetGenericTypeDefinition() == typeof(VBuffer<>)
                ? typeof(VectorColumn<>).MakeGenericType(raw.GetGenericArguments()[0])
                : typeof(Column<>).MakeGenericType(raw);
            return (Column)Activator.CreateInstance(type, row, column, capacity)!;
        }
    }

    private class Column<T> : Column
    {
        private readonly ValueGetter<T> _getter;

        public Column(DataViewRow row, DataViewSchema.Column column, int capacity)
        {
            _getter = row.GetGetter<T>(column);
            Values = new T[capacity];
        }

        protected T[] Values { get; }

        public override void Capture(int slot) => Read(ref Values[slot]);

        protected void Read(ref T value) => _getter(ref value);

        public virtual void Get(int slot, ref T value) => value = Values[slot];
    }

    private sealed class VectorColumn<TItem>(DataViewRow row, DataViewSchema.Column column, int capacity) : Column<VBuffer<TItem>>(row, column, capacity)
    {
        private VBuffer<TItem> _scratch;

        // The getter may hand out its own arrays: copy them into the slot's.
        public override void Capture(int slot)
        {
            Read(ref _scratch);
            _scratch.CopyTo(ref Values[slot]);
        }

        // The caller may later write into what it got: give it a copy.
        public override void Get(int slot, ref VBuffer<TItem> value) => Values[slot].CopyTo(ref value);
    }
}
