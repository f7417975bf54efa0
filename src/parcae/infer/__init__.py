"""Inference: KV cache, generation, adaptive depth."""
