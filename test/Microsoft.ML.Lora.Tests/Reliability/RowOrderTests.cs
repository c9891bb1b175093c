using Microsoft.ML.Data;
using Microsoft.ML.Lora.Tests.MLNet;

namespace Microsoft.ML.Lora.Tests.Reliability;

/// <summary>
/// Generated text is matched to its row by the row itself: a data view whose every cursor returns the rows in a new
/// order (a shuffling loader, which breaks IDataView's rule that cursors agree on the order) still gets each row's own
/// completion, and the other columns stay with their row.
/// </summary>
public sealed class RowOrderTests : MLNetTestBase
{
    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(8)]
    [InlineData(64)]
    public void Every_generated_text_lands_on_its_own_row_when_each_cursor_shuffles(int batchSize)
    {
        var ml = new MLContext(seed: 1);
        using var model = Trainer(ml, batchSize).Fit(ml.Data.LoadFromEnumerable(Rows(4)));
        var data = new ShufflingDataView(50);

        var output = model.Transform(data);
        using var cursor = output.GetRowCursor(output.Schema);
        var prompt = cursor.GetGetter<ReadOnlyMemory<char>>(output.Schema["Prompt"]);
        var number = cursor.GetGetter<int>(output.Schema["Number"]);
        var digits = cursor.GetGetter<VBuffer<int>>(output.Schema["Digits"]);
        var generated = cursor.GetGetter<ReadOnlyMemory<char>>(output.Schema["GeneratedText"]);
        var id = cursor.GetIdGetter();
        var seen = new List<int>();
        ReadOnlyMemory<char> p = default, g = default;
        int n = 0;
        VBuffer<int> d = default;
        DataViewRowId rowId = default;
        while (cursor.MoveNext())
        {
            generated(ref g); // read first, so the cursor reads ahead before the other columns are read
            prompt(ref p);
            number(ref n);
            digits(ref d);
            id(ref rowId);
            g.ToString().Should().Be(FakeTextGenerator.Complete(p.ToString(), "n4-r8"), $"row {cursor.Position} has prompt '{p}'");
            p.ToString().Should().Be(ShufflingDataView.PromptOf(n));
            d.DenseValues().Should().Equal(ShufflingDataView.DigitsOf(n));
            rowId.Should().Be(new DataViewRowId((ulong)n, 0));
            seen.Add(n);
        }
        seen.Should().BeEquivalentTo(Enumerable.Range(0, 50), "every row comes once");
        seen.Should().NotEqual(Enumerable.Range(0, 50), "the view shuffles");
        data.Cursors.Should().Be(1, "the transform reads each row once, on one cursor");
        FakeOf(model).BatchSizes.Sum().Should().Be(50, "each prompt is generated once");
        FakeOf(model).BatchSizes.Max().Should().Be(Math.Min(batchSize, 50));
    }

    [Fact]
    public void GetColumn_on_a_shuffling_view_pairs_each_prompt_with_its_completion()
    {
        var ml = new MLContext(seed: 1);
        using var model = Trainer(ml, batchSize: 8).Fit(ml.Data.LoadFromEnumerable(Rows(4)));

        var output = model.Transform(new ShufflingDataView(50));
        var rows = ml.Data.CreateEnumerable<PromptAndText>(output, reuseRowObject: false).ToList();

        rows.Should().HaveCount(50);
        rows.Should().OnlyContain(r => r.GeneratedText == FakeTextGenerator.Complete(r.Prompt, "n4-r8"));
    }

    public sealed class PromptAndText
    {
        public string Prompt { get; set; } = "";
        public string GeneratedText { get; set; } = "";
    }

    /// <summary>
    /// Rows 0..n-1 (Prompt "prompt k", Number k, Digits the decimal digits of k, id k); every cursor returns them in
    /// a new random order, and its vector getter writes into the caller's buffer.
    /// </summary>
    private sealed class ShufflingDataView : IDataView
    {
        private readonly int _count;
        private int _cursors;

        public ShufflingDataView(int count)
        {
            _count = count;
            var builder = new DataViewSchema.Builder();
            builder.AddColumn("Prompt", TextDataViewType.Instance);
            builder.AddColumn("Number", NumberDataViewType.Int32);
            builder.AddColumn("Digits", new VectorDataViewType(NumberDataViewType.Int32));
            Schema = builder.ToSchema();
        }

        public int Cursors => _cursors;

        public static string PromptOf(int k) => $"prompt {k}";

        public static int[] DigitsOf(int k) => k.ToString(System.Globalization.CultureInfo.InvariantCulture).Select(c => c - '0').ToArray();

        public bool CanShuffle => false;

        public DataViewSchema Schema { get; }

        public long? GetRowCount() => _count;

        public DataViewRowCursor GetRowCursor(IEnumerable<DataViewSchema.Column> columnsNeeded, Random? rand = null)
        {
            int cursor = Interlocked.Increment(ref _cursors);
            var order = Enumerable.Range(0, _count).ToArray();
            new Random(cursor).Shuffle(order);
            return new Cursor(this, order, columnsNeeded.Select(c => c.Index).ToHashSet());
        }

        public DataViewRowCursor[] GetRowCursorSet(IEnumerable<DataViewSchema.Column> columnsNeeded, int n, Random? rand = null) =>
            [GetRowCursor(columnsNeeded, rand)];

        private sealed class Cursor(ShufflingDataView parent, int[] order, HashSet<int> active) : DataViewRowCursor
        {
            private long _position = -1;

            public override DataViewSchema Schema => parent.Schema;
            public override long Position => _position;
            public override long Batch => 0;
            private int Current => order[_position];

            public override bool MoveNext() => ++_position < order.Length;

            public override bool IsColumnActive(DataViewSchema.Column column) => active.Contains(column.Index);

            public override ValueGetter<DataViewRowId> GetIdGetter() =>
                (ref DataViewRowId value) => value = new DataViewRowId((ulong)Current, 0);

            public override ValueGetter<TValue> GetGetter<TValue>(DataViewSchema.Column column)
            {
                Delegate getter = column.Index switch
                {
                    0 => (ValueGetter<ReadOnlyMemory<char>>)((ref ReadOnlyMemory<char> v) => v = PromptOf(Current).AsMemory()),
                    1 => (ValueGetter<int>)((ref int v) => v = Current),
                    _ => (ValueGetter<VBuffer<int>>)((ref VBuffer<int> v) =>
                    {
                        var digits = DigitsOf(Current);
                        var editor = VBufferEditor.Create(ref v, digits.Length);
                        digits.CopyTo(editor.Values);
                        v = editor.Commit();
                    }),
                };
                return (ValueGetter<TValue>)getter;
            }
        }
    }
}
