"""Benchmark scripts: one module per benchmark, `python -m benchmarks.run_all` runs them all."""
