using System.Globalization;
using System.Reflection;
using Microsoft.ML.Runtime;
using Microsoft.ML.Transforms;

namespace Microsoft.ML.Lora.MLNet;

/// <summary>
/// Builds ML.NET's Expression estimator from <c>mlContext.Transforms.Text</c>. Its constructor and ColumnOptions are
/// internal, and the public <c>Transforms.Expression</c> needs the TransformsCatalog, which the text catalog does not
/// expose; both are reached by reflection against the pinned ML.NET version.
/// </summary>
internal static class ExpressionEstimators
{
    private const BindingFlags Any = BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public;

    public static ExpressionEstimator Create(TransformsCatalog.TextTransforms catalog, string outputColumnName, string[] inputColumnNames, string expression)
    {
        var optionsType = typeof(ExpressionEstimator).GetNestedType("ColumnOptions", BindingFlags.NonPublic | BindingFlags.Public)
            ?? throw new InvalidOperationException("ExpressionEstimator.ColumnOptions not found (ML.NET internals changed).");
        var column = Activator.CreateInstance(optionsType, Any, null, [outputColumnName, inputColumnNames, expression], CultureInfo.InvariantCulture)!;
        var columns = Array.CreateInstance(optionsType, 1);
        columns.SetValue(column, 0);
        return (ExpressionEstimator)Activator.CreateInstance(typeof(ExpressionEstimator), Any, null, [EnvironmentOf(catalog), columns], CultureInfo.InvariantCulture)!;
    }

    // TransformsCatalog.TextTransforms keeps its IHostEnvironment in an internal property (IInternalCatalog.Environment).
    private static IHostEnvironment EnvironmentOf(TransformsCatalog.TextTransforms catalog)
    {
        var property = catalog.GetType().GetProperties(Any).FirstOrDefault(p => typeof(IHostEnvironment).IsAssignableFrom(p.PropertyType))
            ?? throw new InvalidOperationException("Cannot find the environment of mlContext.Transforms.Text (ML.NET internals changed).");
        return (IHostEnvironment)property.GetValue(catalog)!;
    }
}
