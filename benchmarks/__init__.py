"""stexport.benchmarks: measured side by side, results under benchmarks/results/."""
