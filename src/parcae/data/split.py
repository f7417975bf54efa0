"""Deterministic document-level train/val split.

A document goes to `val` when `u(doc) < val_fraction`, with `u` the first 64 bits of
sha256(UTF-8 text) / 2^64: independent of order, sharding and machine, and duplicates of a
document always land in the same split (no train/val leakage through copies).
"""

from __future__ import annotations

import hashlib

from parcae.errors import ConfigError

DEFAULT_VAL_FRACTION = 0.05


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val fraction must be in [0, 1), got {val_fraction}")


def split_of(text: str, val_fraction: float) -> str:
    """`"val"` if the document's hash falls below `val_fraction`, else `"train"`."""
    u = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64
    return "val" if u < val_fraction else "train"
