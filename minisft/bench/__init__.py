"""Benchmarks of minisft's primitives: `python -m minisft.bench.<name>` (timings, not tests)."""
