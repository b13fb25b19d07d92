"""Benchmark scripts for jvae; run each as ``python benchmarks/<name>.py``."""
