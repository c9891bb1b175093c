namespace Microsoft.ML.Lora.MLNet;

internal static class TempFolder
{
    public static string Create()
    {
        string path = Path.Combine(Path.GetTempPath(), "mllora-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(path);
        return path;
    }

    public static void Delete(string path)
    {
        try { Directory.Delete(path, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}
