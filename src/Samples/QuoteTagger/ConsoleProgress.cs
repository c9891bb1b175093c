using System.Globalization;
using System.Text;

namespace QuoteTagger;

/// <summary>
/// One-line training progress: <c>[##........] 12/60 loss 3.214 lr 1.0e-03 1234 tok/s 00:12 ETA 00:48</c>.
/// On an interactive console the line is redrawn in place with '\r'; when output is redirected (CI logs)
/// a plain line is written each time another 10% of the steps is done.
/// </summary>
internal sealed class ConsoleProgress
    : IProgress<(int step, int totalSteps, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed)>
{
    private const int BarWidth = 10;

    private readonly TextWriter _writer;
    private readonly bool _interactive;
    private readonly bool _isConsole;
    private readonly Lock _gate = new();
    private int _lastLength;
    private int _lastDecile;
    private bool _lineOpen;

    /// <param name="writer">Where to write; <see cref="Console.Out"/> when null.</param>
    /// <param name="interactive">Redraw in place; when null, true exactly when the console output is not redirected.</param>
    public ConsoleProgress(TextWriter? writer = null, bool? interactive = null)
    {
        _writer = writer ?? Console.Out;
        _interactive = interactive ?? !Console.IsOutputRedirected;
        _isConsole = writer is null;
    }

    public void Report((int step, int totalSteps, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed) value)
    {
        lock (_gate)
        {
            string line = Format(value);
            int total = Math.Max(value.totalSteps, 1);
            bool done = value.step >= total;

            if (_interactive)
            {
                // A line longer than the terminal wraps and '\r' can no longer redraw it.
                int max = _isConsole ? ConsoleWidth() - 1 : 0;
                if (max > 0 && line.Length > max)
                    line = line[..max];
                // Pad with spaces to erase the tail of a longer previous line.
                string padded = line.Length < _lastLength ? line.PadRight(_lastLength) : line;
                _writer.Write('\r');
                _writer.Write(padded);
                _lastLength = line.Length;
                _lineOpen = !done;
                if (done)
                    _writer.WriteLine();
                _writer.Flush();
            }
            else
            {
                int decile = (int)(10L * Math.Clamp(value.step, 0, total) / total);
                if (decile > _lastDecile)
                {
                    _lastDecile = decile;
                    _writer.WriteLine(line);
                    _writer.Flush();
                }
            }
        }
    }

    /// <summary>Ends an in-place line that the last report left open (for a run stopped before its last step).</summary>
    public void Complete()
    {
        lock (_gate)
        {
            if (_lineOpen)
            {
                _writer.WriteLine();
                _writer.Flush();
                _lineOpen = false;
            }
        }
    }

    internal static string Format((int step, int totalSteps, double loss, double learningRate, double tokensPerSecond, TimeSpan elapsed) v)
    {
        var inv = CultureInfo.InvariantCulture;
        double fraction = v.totalSteps > 0 ? Math.Clamp((double)v.step / v.totalSteps, 0, 1) : 0;
        int filled = (int)Math.Floor(fraction * BarWidth);

        var sb = new StringBuilder(96);
        sb.Append('[').Append('#', filled).Append('.', BarWidth - filled).Append("] ");
        sb.Append(v.step.ToString(inv)).Append('/').Append(v.totalSteps.ToString(inv));
        sb.Append(" loss ").Append(v.loss.ToString("0.000", inv));
        sb.Append(" lr ").Append(v.learningRate.ToString("0.0e+00", inv));
        sb.Append(' ').Append(v.tokensPerSecond.ToString("0", inv)).Append(" tok/s");
        sb.Append(' ').Append(FormatTime(v.elapsed.TotalSeconds));

        sb.Append(" ETA ");
        if (v.step >= v.totalSteps && v.totalSteps > 0)
            sb.Append(FormatTime(0));
        else if (v.step > 0 && v.totalSteps > 0 && v.elapsed > TimeSpan.Zero)
            sb.Append(FormatTime(v.elapsed.TotalSeconds / v.step * (v.totalSteps - v.step)));
        else
            sb.Append("--:--");
        return sb.ToString();
    }

    /// <summary>mm:ss, or h:mm:ss from one hour on; "--:--" when not a sensible duration.</summary>
    internal static string FormatTime(double totalSeconds)
    {
        if (double.IsNaN(totalSeconds) || totalSeconds >= 1e9)
            return "--:--";
        long seconds = (long)Math.Max(totalSeconds, 0);
        long h = seconds / 3600, m = seconds / 60 % 60, s = seconds % 60;
        return h > 0
            ? string.Create(CultureInfo.InvariantCulture, $"{h}:{m:00}:{s:00}")
            : string.Create(CultureInfo.InvariantCulture, $"{m:00}:{s:00}");
    }

    private static int ConsoleWidth()
    {
        try
        {
            return Console.WindowWidth;
        }
        catch (IOException)
        {
            return 0;
        }
        catch (PlatformNotSupportedException)
        {
            return 0;
        }
    }
}
