"""Scaling laws for looping: isoFLOP fits of the optimal μ_rec and tokens, and training plans."""
