using System.Buffers.Binary;
using System.Globalization;
using System.IO.Compression;

namespace QuoteTagger;

/// <summary>
/// Draws a training-loss curve into an 800x450 RGB PNG without any imaging dependency: a small rasterizer
/// (background, grid, axes, 2-px polyline, 5x7 bitmap-font labels) and a minimal PNG encoder
/// (IHDR/IDAT/IEND chunks, zlib via <see cref="ZLibStream"/>, table-driven CRC-32).
/// </summary>
internal static class LossChart
{
    private const int Width = 800;
    private const int Height = 450;

    // Plot rectangle (axes are drawn on its left and bottom edges).
    private const int PlotLeft = 100;
    private const int PlotRight = 780;
    private const int PlotTop = 45;
    private const int PlotBottom = 395;

    // Data are mapped inside the plot rectangle with this inset so the line does not lie on the axes.
    private const int Inset = 6;

    private static readonly Rgb White = new(255, 255, 255);
    private static readonly Rgb Black = new(0, 0, 0);
    private static readonly Rgb GridGray = new(225, 225, 225);
    private static readonly Rgb TextGray = new(60, 60, 60);
    private static readonly Rgb LineBlue = new(31, 119, 180);

    /// <summary>Writes the chart of <paramref name="points"/> to <paramref name="path"/> (replaced atomically).</summary>
    /// <remarks>Points are drawn in step order; points whose loss is NaN or infinite are skipped and break the line.</remarks>
    public static void WritePng(string path, IReadOnlyList<(int step, double loss)> points, string title)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        ArgumentNullException.ThrowIfNull(points);
        title ??= string.Empty;

        var canvas = new Canvas(Width, Height);
        canvas.Fill(White);
        Draw(canvas, points, title);
        byte[] png = EncodePng(canvas);

        string fullPath = Path.GetFullPath(path);
        string directory = Path.GetDirectoryName(fullPath)!;
        Directory.CreateDirectory(directory);
        string temp = Path.Combine(directory, $".{Path.GetFileName(fullPath)}.{Guid.NewGuid():N}.tmp");
        try
        {
            File.WriteAllBytes(temp, png);
            File.Move(temp, fullPath, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    private static void Draw(Canvas canvas, IReadOnlyList<(int step, double loss)> points, string title)
    {
        // Stable sort by step; keep non-finite losses in place as line breaks.
        var sorted = points.Select((p, i) => (p.step, p.loss, i)).OrderBy(p => p.step).ThenBy(p => p.i).ToArray();
        var finite = sorted.Where(p => double.IsFinite(p.loss)).ToArray();

        // Title, centred above the plot.
        const int titleScale = 2;
        canvas.DrawText((Width - Font.MeasureWidth(title, titleScale)) / 2, 14, title, titleScale, Black);

        // Grid.
        const int vDivisions = 10, hDivisions = 5;
        for (int i = 1; i < vDivisions; i++)
        {
            int x = PlotLeft + (PlotRight - PlotLeft) * i / vDivisions;
            canvas.VLine(x, PlotTop, PlotBottom, GridGray);
        }
        for (int i = 1; i < hDivisions; i++)
        {
            int y = PlotTop + (PlotBottom - PlotTop) * i / hDivisions;
            canvas.HLine(PlotLeft, PlotRight, y, GridGray);
        }
        canvas.HLine(PlotLeft, PlotRight, PlotTop, GridGray);
        canvas.VLine(PlotRight, PlotTop, PlotBottom, GridGray);

        // Axes.
        canvas.VLine(PlotLeft, PlotTop, PlotBottom, Black);
        canvas.HLine(PlotLeft, PlotRight, PlotBottom, Black);

        // Axis names.
        const int labelScale = 2;
        canvas.DrawText((PlotLeft + PlotRight - Font.MeasureWidth("step", labelScale)) / 2, PlotBottom + 30, "step", labelScale, TextGray);
        int lossNameY = (PlotTop + PlotBottom) / 2 - Font.GlyphHeight * labelScale / 2;

        if (finite.Length == 0)
        {
            canvas.DrawText(10, lossNameY, "loss", labelScale, TextGray);
            return;
        }

        // Ranges.
        int stepMin = finite[0].step, stepMax = finite[^1].step;
        double lossMin = finite.Min(p => p.loss), lossMax = finite.Max(p => p.loss);
        double lo = lossMin, hi = lossMax;
        if (!(hi > lo))
        {
            double pad0 = Math.Max(Math.Abs(lo) * 0.1, 1e-3);
            lo -= pad0;
            hi += pad0;
        }
        else
        {
            double pad = (hi - lo) * 0.05;
            lo -= pad;
            hi += pad;
        }

        int MapX(int step) => stepMax == stepMin
            ? (PlotLeft + PlotRight) / 2
            : PlotLeft + Inset + (int)Math.Round((double)(step - stepMin) / ((double)stepMax - stepMin) * (PlotRight - PlotLeft - 2 * Inset));
        int MapY(double loss) => PlotBottom - (int)Math.Round((loss - lo) / (hi - lo) * (PlotBottom - PlotTop));

        // Min/max labels with tick marks: loss on the y axis, step on the x axis.
        foreach (double value in lossMax == lossMin ? [lossMax] : new[] { lossMax, lossMin })
        {
            int y = MapY(value);
            canvas.HLine(PlotLeft - 5, PlotLeft, y, Black);
            string text = FormatNumber(value);
            canvas.DrawText(PlotLeft - 9 - Font.MeasureWidth(text, labelScale), y - Font.GlyphHeight * labelScale / 2, text, labelScale, Black);
        }
        // A constant loss puts its label mid-height, where the axis name goes: move the name below it.
        canvas.DrawText(10, lossMax == lossMin ? lossNameY + 30 : lossNameY, "loss", labelScale, TextGray);
        foreach (int step in stepMax == stepMin ? [stepMin] : new[] { stepMin, stepMax })
        {
            int x = MapX(step);
            canvas.VLine(x, PlotBottom, PlotBottom + 5, Black);
            string text = step.ToString(CultureInfo.InvariantCulture);
            int w = Font.MeasureWidth(text, labelScale);
            int tx = Math.Clamp(x - w / 2, 0, Width - w);
            canvas.DrawText(tx, PlotBottom + 9, text, labelScale, Black);
        }

        // The loss line (2 px), broken at non-finite values; a point with no finite neighbour gets a marker.
        (int x, int y)? previous = null;
        for (int i = 0; i < sorted.Length; i++)
        {
            if (!double.IsFinite(sorted[i].loss))
            {
                previous = null;
                continue;
            }
            (int x, int y) current = (MapX(sorted[i].step), MapY(sorted[i].loss));
            if (previous is { } prev)
                canvas.Line(prev.x, prev.y, current.x, current.y, LineBlue);
            else if (i + 1 >= sorted.Length || !double.IsFinite(sorted[i + 1].loss))
                canvas.Square(current.x - 2, current.y - 2, 6, LineBlue);
            previous = current;
        }
    }

    /// <summary>Short label text using only digits, '.', '-' and 'e': "3.214", "12345.6", "1.2e-4".</summary>
    internal static string FormatNumber(double value)
    {
        if (value == 0)
            return "0";
        double a = Math.Abs(value);
        if (a >= 1e-2 && a < 1e5)
            return value.ToString("0.###", CultureInfo.InvariantCulture);
        int exponent = (int)Math.Floor(Math.Log10(a));
        double mantissa = value / Math.Pow(10, exponent);
        if (Math.Abs(Math.Round(mantissa, 2)) >= 10)
        {
            exponent++;
            mantissa /= 10;
        }
        return mantissa.ToString("0.##", CultureInfo.InvariantCulture) + "e" + exponent.ToString(CultureInfo.InvariantCulture);
    }

    // ---------------------------------------------------------------- PNG encoding

    private static readonly byte[] PngSignature = [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0D, 0x0A, 0x1A, 0x0A];

    private static byte[] EncodePng(Canvas canvas)
    {
        // Raw scanlines, each prefixed with filter type 0 (None).
        int stride = canvas.Width * 3;
        var raw = new byte[canvas.Height * (stride + 1)];
        for (int y = 0; y < canvas.Height; y++)
        {
            raw[y * (stride + 1)] = 0;
            Array.Copy(canvas.Pixels, y * stride, raw, y * (stride + 1) + 1, stride);
        }

        byte[] idat;
        using (var compressed = new MemoryStream())
        {
            using (var zlib = new ZLibStream(compressed, CompressionLevel.Optimal, leaveOpen: true))
                zlib.Write(raw);
            idat = compressed.ToArray();
        }

        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(0), canvas.Width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), canvas.Height);
        ihdr[8] = 8;  // bit depth
        ihdr[9] = 2;  // colour type: truecolour (RGB)
        ihdr[10] = 0; // compression: deflate
        ihdr[11] = 0; // filter method 0
        ihdr[12] = 0; // no interlace

        using var png = new MemoryStream(idat.Length + 64);
        png.Write(PngSignature);
        WriteChunk(png, "IHDR", ihdr);
        WriteChunk(png, "IDAT", idat);
        WriteChunk(png, "IEND", []);
        return png.ToArray();
    }

    private static void WriteChunk(Stream stream, string type, ReadOnlySpan<byte> data)
    {
        Span<byte> header = stackalloc byte[8];
        BinaryPrimitives.WriteInt32BigEndian(header, data.Length);
        for (int i = 0; i < 4; i++)
            header[4 + i] = (byte)type[i];
        stream.Write(header);
        stream.Write(data);

        uint crc = Crc32.Update(Crc32.Initial, header[4..]);
        crc = Crc32.Update(crc, data);
        Span<byte> trailer = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(trailer, crc ^ 0xFFFFFFFFu);
        stream.Write(trailer);
    }

    /// <summary>CRC-32 (ISO-HDLC, reflected polynomial 0xEDB88320) as PNG chunks use it.</summary>
    internal static class Crc32
    {
        public const uint Initial = 0xFFFFFFFFu;

        private static readonly uint[] Table = BuildTable();

        private static uint[] BuildTable()
        {
            var table = new uint[256];
            for (uint n = 0; n < 256; n++)
            {
                uint c = n;
                for (int k = 0; k < 8; k++)
                    c = (c & 1) != 0 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
                table[n] = c;
            }
            return table;
        }

        public static uint Update(uint crc, ReadOnlySpan<byte> data)
        {
            foreach (byte b in data)
                crc = Table[(crc ^ b) & 0xFF] ^ (crc >> 8);
            return crc;
        }

        public static uint Compute(ReadOnlySpan<byte> data) => Update(Initial, data) ^ 0xFFFFFFFFu;
    }

    // ---------------------------------------------------------------- rasterizer

    private readonly record struct Rgb(byte R, byte G, byte B);

    private sealed class Canvas(int width, int height)
    {
        public int Width { get; } = width;
        public int Height { get; } = height;
        public byte[] Pixels { get; } = new byte[width * height * 3];

        public void Fill(Rgb c)
        {
            for (int i = 0; i < Pixels.Length; i += 3)
            {
                Pixels[i] = c.R;
                Pixels[i + 1] = c.G;
                Pixels[i + 2] = c.B;
            }
        }

        public void Set(int x, int y, Rgb c)
        {
            if ((uint)x >= (uint)Width || (uint)y >= (uint)Height)
                return;
            int i = (y * Width + x) * 3;
            Pixels[i] = c.R;
            Pixels[i + 1] = c.G;
            Pixels[i + 2] = c.B;
        }

        public void HLine(int x0, int x1, int y, Rgb c)
        {
            for (int x = Math.Min(x0, x1); x <= Math.Max(x0, x1); x++)
                Set(x, y, c);
        }

        public void VLine(int x, int y0, int y1, Rgb c)
        {
            for (int y = Math.Min(y0, y1); y <= Math.Max(y0, y1); y++)
                Set(x, y, c);
        }

        /// <summary>A 2x2 square: the brush of the 2-px line.</summary>
        public void Dot(int x, int y, Rgb c)
        {
            Set(x, y, c);
            Set(x + 1, y, c);
            Set(x, y + 1, c);
            Set(x + 1, y + 1, c);
        }

        public void Square(int x, int y, int size, Rgb c)
        {
            for (int dy = 0; dy < size; dy++)
                for (int dx = 0; dx < size; dx++)
                    Set(x + dx, y + dy, c);
        }

        /// <summary>Bresenham line drawn with the 2x2 brush.</summary>
        public void Line(int x0, int y0, int x1, int y1, Rgb c)
        {
            int dx = Math.Abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
            int dy = -Math.Abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
            int err = dx + dy;
            while (true)
            {
                Dot(x0, y0, c);
                if (x0 == x1 && y0 == y1)
                    break;
                int e2 = 2 * err;
                if (e2 >= dy) { err += dy; x0 += sx; }
                if (e2 <= dx) { err += dx; y0 += sy; }
            }
        }

        public void DrawText(int x, int y, string text, int scale, Rgb c)
        {
            foreach (char ch in text)
            {
                byte[] rows = Font.Glyph(ch);
                int top = y + Font.RowOffset(ch) * scale;
                for (int row = 0; row < Font.GlyphHeight; row++)
                    for (int col = 0; col < Font.GlyphWidth; col++)
                        if ((rows[row] & (0x10 >> col)) != 0)
                            for (int sy = 0; sy < scale; sy++)
                                for (int sx = 0; sx < scale; sx++)
                                    Set(x + col * scale + sx, top + row * scale + sy, c);
                x += Font.Advance * scale;
            }
        }
    }

    /// <summary>
    /// 5x7 bitmap font: digits, a little punctuation and lowercase letters (uppercase is folded to lowercase,
    /// so arbitrary titles stay legible). Each glyph is 7 rows, bit 4 = leftmost column; g, j, p, q, y
    /// hang below the baseline.
    /// Unknown characters are drawn as a hollow box.
    /// </summary>
    private static class Font
    {
        public const int GlyphWidth = 5;
        public const int GlyphHeight = 7;
        public const int Advance = 6;

        private static readonly byte[] Unknown = [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F];

        private static readonly Dictionary<char, byte[]> Glyphs = new()
        {
            ['0'] = [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
            ['1'] = [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
            ['2'] = [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
            ['3'] = [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
            ['4'] = [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
            ['5'] = [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
            ['6'] = [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
            ['7'] = [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
            ['8'] = [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
            ['9'] = [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
            [' '] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            ['.'] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
            ['-'] = [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
            ['+'] = [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
            [','] = [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
            [':'] = [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
            ['/'] = [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
            ['_'] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
            ['('] = [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
            [')'] = [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
            ['a'] = [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
            ['b'] = [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E],
            ['c'] = [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E],
            ['d'] = [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
            ['e'] = [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
            ['f'] = [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
            ['g'] = [0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E],
            ['h'] = [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
            ['i'] = [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E],
            ['j'] = [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C],
            ['k'] = [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
            ['l'] = [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
            ['m'] = [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11],
            ['n'] = [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
            ['o'] = [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
            ['p'] = [0x1E, 0x11, 0x11, 0x11, 0x1E, 0x10, 0x10],
            ['q'] = [0x0F, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x01],
            ['r'] = [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
            ['s'] = [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E],
            ['t'] = [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
            ['u'] = [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D],
            ['v'] = [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04],
            ['w'] = [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A],
            ['x'] = [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11],
            ['y'] = [0x11, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E],
            ['z'] = [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F],
        };

        // Letters with a descender are stored from their x-height down and drawn this many rows lower.
        private static readonly Dictionary<char, int> Drop = new() { ['g'] = 2, ['p'] = 2, ['q'] = 2, ['y'] = 2, ['j'] = 1 };

        public static byte[] Glyph(char c) =>
            Glyphs.TryGetValue(char.ToLowerInvariant(c), out var rows) ? rows : Unknown;

        public static int RowOffset(char c) => Drop.GetValueOrDefault(char.ToLowerInvariant(c));

        public static int MeasureWidth(string text, int scale) =>
            text.Length == 0 ? 0 : (text.Length * Advance - (Advance - GlyphWidth)) * scale;
    }
}
