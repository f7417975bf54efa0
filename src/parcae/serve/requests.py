"""A generation request as the serving engine takes it, and the checks it must pass.

`GenerationRequest.check(model)` refuses bad values with one `PromptError` before the request
is queued, through the same checks `parcae.generate` applies (`prepare_prompts`,
`check_sampling`, `check_seed`, `check_num_steps`, `exit_rule`), plus two rules of a server:
`max_tokens` is at least 1, and the prompt plus `max_tokens` must fit in the context (a server
refuses rather than silently truncating).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from parcae.errors import PromptError
from parcae.infer.engine import check_sampling, check_seed, exit_rule
from parcae.infer.generate import prepare_prompts
from parcae.model.base import check_num_steps
from parcae.values import is_number


@dataclass
class GenerationRequest:
    """One completion: continue `prompt_ids` by up to `max_tokens` tokens.

    temperature 0 is greedy; top_p restricts sampling to the nucleus; seed makes sampling
    reproducible (a generator of its own, whatever shares the batch). num_steps: loop depth T
    (None: the model's mean_recurrence; a GPT ignores it); adaptive_eps: per-token early exit
    on the loop residual (T stays the maximum). Generation stops at the first token in
    `stop_token_ids` (EOS, say) or after `max_tokens` tokens.
    """

    prompt_ids: list[int]
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float | None = None
    seed: int | None = None
    num_steps: int | None = None
    adaptive_eps: float | None = None
    stop_token_ids: Iterable[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if isinstance(self.stop_token_ids, int) and not isinstance(self.stop_token_ids, bool):
            self.stop_token_ids = frozenset([self.stop_token_ids])
        elif self.stop_token_ids is None:
            self.stop_token_ids = frozenset()
        elif isinstance(self.stop_token_ids, (list, tuple, set, frozenset)):
            self.stop_token_ids = frozenset(self.stop_token_ids)

    def check(self, model) -> None:
        """Raise one `PromptError` naming the first bad value (see the module docstring)."""
        config = model.config
        prepare_prompts(model, [self.prompt_ids])
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool):
            raise PromptError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.max_tokens < 1:
            raise PromptError(f"max_tokens must be a positive integer, got {self.max_tokens}")
        if not is_number(self.temperature):
            raise PromptError(f"temperature must be a number, got {self.temperature!r}")
        if self.top_p is not None and not is_number(self.top_p):
            raise PromptError(f"top_p must be a number, got {self.top_p!r}")
        check_sampling(self.temperature, None, self.top_p, self.max_tokens)
        check_seed(self.seed)
        check_num_steps(self.num_steps, "num_steps", PromptError)
        if self.adaptive_eps is not None and not is_number(self.adaptive_eps):
            raise PromptError(f"adaptive_eps must be a number, got {self.adaptive_eps!r}")
        exit_rule(self.adaptive_eps)
        prompt = len(self.prompt_ids)
        if prompt + self.max_tokens > config.context_length:
            raise PromptError(
                f"max_tokens is {self.max_tokens}, but the prompt has {prompt} tokens and the "
                f"model's context holds {config.context_length}: at most "
                f"{config.context_length - prompt} new tokens fit"
            )
        if not isinstance(self.stop_token_ids, frozenset):
            raise PromptError(
                f"stop_token_ids must be a set of token ids, got {self.stop_token_ids!r}"
            )
        for token in self.stop_token_ids:
            if not isinstance(token, int) or isinstance(token, bool):
                raise PromptError(f"stop token ids must be integers, got {token!r}")
            if not 0 <= token < config.vocab_size:
                raise PromptError(
                    f"stop token id {token} is outside the vocabulary [0, {config.vocab_size})"
                )

    def depth(self, model) -> int:
        """The loop steps this request runs (0 for a GPT)."""
        if not model.config.is_looped:
            return 0
        return model.config.mean_recurrence if self.num_steps is None else self.num_steps
