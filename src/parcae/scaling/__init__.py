"""Scaling laws for looping: isoFLOP fits of the optimal μ_rec and tokens, and training plans."""

from parcae.model.flops import forward_flops_per_token, training_flops_per_token

__all__ = ["forward_flops_per_token", "training_flops_per_token"]
