"""Evaluation: loss and bits-per-byte, depth sweeps, benchmarks."""
