"""Kong benchmark suite: python -m benchmarks --help."""
