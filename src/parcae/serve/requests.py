"""A generation request as the serving engine takes it, and the checks it must pass.

A request is a prompt, a `SamplingParams` (checked when it was built: `parcae.infer.sampling`)
and the stop token ids. `GenerationRequest.check(model)` refuses the rest with one
`PromptError` before the request is queued: the prompt (`prepare_prompts`, as `parcae.generate`
checks it), and two rules of a server: `max_new_tokens` is at least 1, and the prompt plus
`max_new_tokens` must fit in the context (a server refuses rather than silently truncating).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from parcae.errors import PromptError
from parcae.infer.generate import prepare_prompts
from parcae.infer.sampling import SamplingParams


@dataclass
class GenerationRequest:
    """One completion: continue `prompt_ids` under `sampling` (its seed: a generator of the
    request's own, whatever shares the batch). Generation stops at the first token in
    `stop_token_ids` (EOS, say) or after `sampling.max_new_tokens` tokens."""

    prompt_ids: list[int]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop_token_ids: Iterable[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if isinstance(self.stop_token_ids, int) and not isinstance(self.stop_token_ids, bool):
            self.stop_token_ids = frozenset([self.stop_token_ids])
        elif self.stop_token_ids is None:
            self.stop_token_ids = frozenset()
        elif isinstance(self.stop_token_ids, (list, tuple, set, frozenset)):
            self.stop_token_ids = frozenset(self.stop_token_ids)

    @property
    def max_tokens(self) -> int:
        return self.sampling.max_new_tokens

    def check(self, model) -> None:
        """Raise one `PromptError` naming the first bad value (see the module docstring)."""
        config = model.config
        prepare_prompts(model, [self.prompt_ids])
        if not isinstance(self.sampling, SamplingParams):
            raise PromptError(f"sampling must be a SamplingParams, got {self.sampling!r}")
        if self.max_tokens < 1:
            raise PromptError(f"max_new_tokens must be at least 1, got {self.max_tokens}")
        prompt = len(self.prompt_ids)
        if prompt + self.max_tokens > config.context_length:
            raise PromptError(
                f"max_new_tokens is {self.max_tokens}, but the prompt has {prompt} tokens and "
                f"the model's context holds {config.context_length}: at most "
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
        return self.sampling.depth(model.config)
