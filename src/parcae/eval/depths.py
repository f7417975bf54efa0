"""Read a model's output at several test-time depths from one forward.

A looped model in eval mode is deterministic and its loop does not depend on how many steps it
will run, so the state after t steps of a forward at depth T_max is the state of a forward at
depth t. One forward at T_max = max(depths) with a loop probe (`parcae.model.loop.LoopProbe`)
reads the logits at every requested t < T_max through the coda and head, and the forward's own
output gives T_max: the prelude runs once and the core T_max times, instead of once per depth
and Σ T times. A fixed-depth model (a GPT) has one depth, written None.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from torch import Tensor, nn

from parcae.errors import ConfigError

R = TypeVar("R")


@dataclass
class DepthOutput:
    """One depth's output. logits: float32 (B, S, V_pad); state, previous: (B, S, d) the loop
    state h_T and h_{T-1} (None for a fixed-depth model)."""

    depth: int | None
    logits: Tensor
    state: Tensor | None = None
    previous: Tensor | None = None


def check_depths(model: nn.Module, depths: Sequence[int | None]) -> list[int | None]:
    """The distinct depths in ascending order: positive integers for a looped model, [None] for
    a fixed-depth one (whatever was asked)."""
    if not model.config.is_looped:
        return [None]
    if not depths:
        raise ConfigError("no depths given")
    for depth in depths:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
            raise ConfigError(f"depths must be positive integers, got {depth!r}")
    return sorted(set(depths))


def at_depths(
    model: nn.Module,
    input_ids: Tensor,
    depths: Sequence[int | None],
    reduce: Callable[[DepthOutput], R],
) -> dict[int | None, R]:
    """{T: reduce(output at depth T)} for input_ids (B, S), from one forward at max(depths).

    `depths` as returned by `check_depths`. `reduce` should shrink the (B, S, V_pad) logits to
    what the caller keeps, so that only one depth's logits are alive at a time.
    """
    if depths == [None]:
        return {None: reduce(DepthOutput(None, model(input_ids).logits))}
    wanted = set(depths)
    results: dict[int | None, R] = {}

    def probe(step: int, h: Tensor, h_prev: Tensor, readout) -> None:
        if step in wanted and step != depths[-1]:
            results[step] = reduce(DepthOutput(step, readout(h), h, h_prev))

    output = model(input_ids, num_steps=depths[-1], probe=probe)
    loop = output.loop
    results[depths[-1]] = reduce(
        DepthOutput(depths[-1], output.logits, loop.final_state, loop.previous_state)
    )
    return {depth: results[depth] for depth in depths}
