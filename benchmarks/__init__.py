"""Benchmark scripts for jvae: ``python -m benchmarks.<name>`` each, ``python -m benchmarks``
for the suite."""
