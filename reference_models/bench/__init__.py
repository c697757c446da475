"""Benchmarks of minisft's primitives: `python -m reference_models.bench.<name>` (timings, not tests)."""
