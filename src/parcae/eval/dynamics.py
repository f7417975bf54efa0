"""The loop as a dynamical system, read off a trained model: the state's norm through depth.

For a stable loop ‖h_t‖ settles (the linear part contracts by ρ(Ā) < 1 each step); for an
unstable one it grows by about ρ(Ā) per step. `loop_trace` reads it for a saved model on the
first rows of its run's validation split (experiments/ traces every looped model of its S1
study to twice its mean recurrence).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TRACE_ROWS = 8


@torch.no_grad()
def loop_trace(model_dir: Path, depth: int, rows: int = TRACE_ROWS) -> dict[str, Any]:
    """{"depth", "state_norm": [mean ‖h_t‖ over tokens for t = 0..depth], "spectral_radius"}
    of the model at `model_dir` on the first `rows` rows of its run's validation split."""
    from parcae.data.loader import iter_eval_batches
    from parcae.eval.run import run_seq_len, validation_dir
    from parcae.infer.loading import load_for_inference

    model, _ = load_for_inference(str(model_dir), device="cpu")
    seq_len = min(run_seq_len(str(model_dir)) or model.config.context_length, 256)
    batch = next(iter_eval_batches(validation_dir(str(model_dir), None), "val", rows, seq_len, 1))
    norms = state_norms(model, batch.inputs, depth)
    return {"depth": depth, "state_norm": norms, "spectral_radius": model.spectral_radius()}


@torch.no_grad()
def state_norms(model: torch.nn.Module, input_ids: torch.Tensor, depth: int) -> list[float]:
    """Mean ‖h_t‖ over the tokens of `input_ids` (B, S) for t = 0..depth, from one forward at
    `depth` (a loop probe reads the state after every step)."""
    norms: list[float] = []

    def probe(step: int, h, h_prev, readout) -> None:
        if step == 1:
            norms.append(float(h_prev.float().norm(dim=-1).mean()))
        norms.append(float(h.float().norm(dim=-1).mean()))

    model(input_ids, num_steps=depth, probe=probe)
    return norms
