using ScottPlot;

namespace QuoteTagger;

/// <summary>The loss curves of a fine-tuning run as an 800x450 PNG, drawn by ScottPlot.</summary>
internal static class LossChart
{
    /// <summary>
    /// Writes the training loss (and the validation loss, when there is any) against the optimizer step to
    /// <paramref name="path"/>: a temp file beside it, then a rename, so a reader never sees half a PNG.
    /// </summary>
    public static void WritePng(string path, IReadOnlyList<(int step, double loss)> training,
        IReadOnlyList<(int step, double loss)> validation, string title)
    {
        var plot = new Plot();
        AddLine(plot, training, "training loss");
        AddLine(plot, validation, "validation loss");
        plot.Title(title);
        plot.XLabel("optimizer step");
        plot.YLabel("loss per completion token");
        plot.ShowLegend(Alignment.UpperRight);
        byte[] png = plot.GetImageBytes(800, 450, ImageFormat.Png);

        string fullPath = Path.GetFullPath(path);
        string temp = Path.Combine(Path.GetDirectoryName(fullPath)!, $".{Path.GetFileName(fullPath)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var file = new FileStream(temp, FileMode.CreateNew))
            {
                file.Write(png);
                file.Flush(flushToDisk: true);
            }
            File.Move(temp, fullPath, overwrite: true);
        }
        finally
        {
            File.Delete(temp); // nothing left when the rename happened
        }
    }

    private static void AddLine(Plot plot, IReadOnlyList<(int step, double loss)> points, string label)
    {
        // A NaN loss (a diverged step) is left out rather than drawn as a gap in the axis range.
        var finite = points.Where(p => double.IsFinite(p.loss)).ToArray();
        if (finite.Length == 0) return;
        var line = plot.Add.Scatter(finite.Select(p => (double)p.step).ToArray(), finite.Select(p => p.loss).ToArray());
        line.LegendText = label;
        line.LineWidth = 2;
        line.MarkerSize = finite.Length == 1 ? 5 : 0;
    }
}
