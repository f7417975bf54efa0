"""Named model configurations (ARCHITECTURE §2) as data: preset name -> architecture and
fields.

The paper's presets share V = 32768, a 2048-token context, 128-dim heads, ReLU², QK-norm, tied
embeddings and value embeddings; Parcae presets loop their core μ_rec = 8 times in training
(backprop through 4). The `-tiny` presets are CPU-sized (a few million parameters) for tests and
the default training run; `gpt-tiny` has the same blocks as `parcae-tiny` (the paper's parameter
matching: the baseline lacks only the injection and C), `rdm-tiny` is the Huginn-style
concatenation-injection recipe without a prelude norm.
"""

from __future__ import annotations

from typing import Any

PAPER_COMMON: dict[str, Any] = dict(vocab_size=32768, context_length=2048, init_orthogonal=True)

_PAPER_SIZES = {  # name: (d_model, ffn_dim, heads, layers per stage)
    "140m": (768, 3072, 6, 2),
    "370m": (1024, 4096, 8, 4),
    "770m": (1280, 5120, 10, 6),
    "1.3b": (1536, 6144, 12, 8),
}

TINY_COMMON: dict[str, Any] = dict(
    vocab_size=4096, context_length=256, d_model=192, ffn_dim=768, n_heads=3, init_orthogonal=True
)

PRESETS: dict[str, tuple[str, dict[str, Any]]] = {}
for _size, (_d, _ff, _heads, _stage) in _PAPER_SIZES.items():
    _common = dict(PAPER_COMMON, d_model=_d, ffn_dim=_ff, n_heads=_heads)
    PRESETS[f"parcae-{_size}"] = (
        "parcae",
        dict(
            _common,
            n_prelude=_stage,
            n_core=_stage,
            n_coda=_stage,
            mean_recurrence=8,
            mean_backprop_depth=4,
        ),
    )
    PRESETS[f"gpt-{_size}"] = ("gpt", dict(_common, n_layers=3 * _stage))

PRESETS["parcae-tiny"] = (
    "parcae",
    dict(TINY_COMMON, n_prelude=2, n_core=2, n_coda=2, mean_recurrence=4, mean_backprop_depth=2),
)
PRESETS["gpt-tiny"] = ("gpt", dict(TINY_COMMON, n_layers=6))
PRESETS["rdm-tiny"] = (
    "parcae",
    dict(PRESETS["parcae-tiny"][1], injection="linear", prelude_norm=False),
)
