"""One sampling spec: `SamplingParams`, validated once, taken by every front end.

`parcae.generate`, `parcae generate` / `parcae chat`, the server and the onnxruntime generator all
take a `SamplingParams`; a value out of range is refused where the spec is built with one
`SamplingError` naming the field and the reason (`"top_p must be in (0, 1], got 2"`). A front
end that spells a field otherwise (`--top-p`, the body field `max_tokens`) restates the error
under its own name (`SamplingError.restated`). Adding an option is one entry in `SamplingParams`
and `RULES`, plus its spelling in each front end.

Fields (None: off, or the model's default):

- `max_new_tokens`: at most this many new tokens (an integer >= 0);
- `temperature`: 0 is greedy; else at least `MIN_TEMPERATURE`: below it float32
  logits / temperature overflow to inf (1 / 1e-39 is inf in float32) and the softmax gives NaN;
- `top_k` (>= 1), `top_p` in (0, 1], `min_p` in [0, 1]: the draw is restricted to the k most
  likely tokens, the nucleus of mass top_p, and the tokens of probability >= min_p times the
  most likely one's (`parcae.infer.engine.sample_next`);
- `seed`: an integer in [0, 2**64) (what a torch.Generator holds; a negative seed would
  silently alias a large one): the draws of a row come from a generator of its own;
- `stop`: stop strings (generation ends once the text holds one; needs a tokenizer);
- `num_steps`: loop depth T in [1, MAX_NUM_STEPS] (a GPT ignores it);
- `adaptive`: per-token early-exit threshold eps >= 0 (finite) on `adaptive_criterion`,
  `residual` or `kl` (`parcae.infer.engine`; T stays the maximum).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from parcae.errors import PromptError
from parcae.infer.engine import EXIT_CRITERIA
from parcae.model.base import MAX_NUM_STEPS
from parcae.values import is_finite_number

MIN_TEMPERATURE = 1e-6
MAX_SEED = 2**64 - 1


class SamplingError(PromptError):
    """A sampling option is invalid: `field` (the `SamplingParams` name), `reason` (what it
    must be) and the `value` given."""

    def __init__(self, field: str, reason: str, value: Any) -> None:
        super().__init__(f"{field} {reason}, got {value!r}")
        self.field, self.reason, self.value = field, reason, value

    def restated(self, name: str) -> SamplingError:
        """The same error under a front end's name for the field (`--top-p`, `max_tokens`)."""
        return SamplingError(name, self.reason, self.value)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


# field -> (accepts the value, what it must be)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "max_new_tokens": (lambda v: _integer(v) and v >= 0, "must be an integer >= 0"),
    "temperature": (
        lambda v: is_finite_number(v) and (v == 0 or v >= MIN_TEMPERATURE),
        f"must be 0 (greedy) or a finite number >= {MIN_TEMPERATURE:g}",
    ),
    "top_k": (_optional(lambda v: _integer(v) and v >= 1), "must be an integer >= 1"),
    "top_p": (_optional(lambda v: is_finite_number(v) and 0 < v <= 1), "must be in (0, 1]"),
    "min_p": (_optional(lambda v: is_finite_number(v) and 0 <= v <= 1), "must be in [0, 1]"),
    "seed": (
        _optional(lambda v: _integer(v) and 0 <= v <= MAX_SEED),
        "must be an integer in [0, 2**64 - 1]",
    ),
    "stop": (
        lambda v: isinstance(v, tuple) and all(isinstance(s, str) and s for s in v),
        "must be non-empty strings",
    ),
    "num_steps": (
        _optional(lambda v: _integer(v) and 1 <= v <= MAX_NUM_STEPS),
        f"must be an integer in [1, {MAX_NUM_STEPS}]",
    ),
    "adaptive": (
        _optional(lambda v: is_finite_number(v) and 0 <= v < math.inf),
        "must be a finite number >= 0",
    ),
    "adaptive_criterion": (lambda v: v in EXIT_CRITERIA, f"must be one of {EXIT_CRITERIA}"),
}


@dataclass(frozen=True)
class SamplingParams:
    """How to continue a prompt (module docstring); checked on construction."""

    max_new_tokens: int = 16
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    num_steps: int | None = None
    adaptive: float | None = None
    adaptive_criterion: str = "residual"

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, (list, tuple)):
            object.__setattr__(self, "stop", tuple(self.stop))
        for field in fields(self):
            accepts, reason = RULES[field.name]
            value = getattr(self, field.name)
            if not accepts(value):
                raise SamplingError(field.name, reason, value)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def depth(self, config) -> int:
        """The loop steps T this spec runs on a model of `config` (0 for a GPT)."""
        if config.default_depth is None:
            return 0
        return config.default_depth if self.num_steps is None else self.num_steps

    def exit_threshold(self, config) -> float | None:
        """The adaptive threshold in effect on a model of `config` (None for a GPT)."""
        return self.adaptive if config.is_looped else None

    def replace(self, **changes) -> SamplingParams:
        """A copy with `changes` (checked again)."""
        return replace(self, **changes)


def restate(names: dict[str, str], build: Callable[[], SamplingParams]) -> SamplingParams:
    """`build()`, with a `SamplingError` restated under the front end's `names` (field -> its
    spelling there; a field not in `names` keeps its own)."""
    try:
        return build()
    except SamplingError as error:
        raise error.restated(names.get(error.field, error.field)) from None
