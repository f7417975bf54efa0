"""The one decoder: prefill, the next-column step and sampling, for every front end.

A *backend* turns tokens into the logits of the next column and keeps its own cache:

- `prefill(ids (B, P), valid (B, P)) -> (logits (B, V), steps (B,))`: the left-padded prompts;
- `step(tokens (B,)) -> (logits (B, V), steps (B,))`: one new token per row;

logits over the first V = vocab_size entries, float32; steps: the loop steps of the forward
that produced each row's logits (0 for a GPT). `CachedModel` is the PyTorch backend over a
`KVCache` (`ModelDecoder` does its forwards), `parcae.export.runtime.OnnxBackend` runs an
exported graph with onnxruntime. `decode(backend, ...)` is the generation loop both drive
(`parcae.generate`, the onnxruntime generator); the continuous batcher (`parcae.serve.batcher`)
schedules rows itself but prefills and steps through the same `ModelDecoder` and samples with
the same `sample_rows`.

`ModelDecoder.step` takes the fast single-token step (`parcae.model.decode.decode_step`, under
`torch.compile` with `compile=True`) when every row runs the cache's full depth T with no early
exit (`rule` None), and the general forward `model(tokens, cache=..., exit_rule=rule)`
otherwise (adaptive exits, rows of different depths: `RowExit`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from parcae.errors import PromptError
from parcae.infer.engine import KLExit, ResidualExit, exit_rule, sample_next
from parcae.infer.sampling import SamplingParams
from parcae.model.cache import KVCache
from parcae.model.decode import decode_step
from parcae.model.loop import ExitRule, Readout


class RowExit:
    """Exit rule of a batch whose rows differ: row b stops after `depths[b]` loop steps, or
    earlier once its score falls below `eps[b]` (0: never), the score being the loop residual,
    or the KL between successive steps' distributions where `kl[b]` (the rules of
    `ResidualExit` and `KLExit`). depths int64 (B,), eps float (B,), kl bool (B,)."""

    def __init__(
        self,
        depths: Tensor,
        eps: Tensor,
        kl: Tensor | None = None,
        vocab_size: int | None = None,
    ) -> None:
        self.depths, self.eps = depths, eps
        self.kl = torch.zeros_like(depths, dtype=torch.bool) if kl is None else kl
        residual_rows = bool(((eps > 0) & ~self.kl).any())
        self.residual_rule = ResidualExit(eps[:, None]) if residual_rows else None
        self.kl_rule = (
            KLExit(eps[:, None], vocab_size) if bool((self.kl & (eps > 0)).any()) else None
        )
        self.steps = 0

    def __call__(self, h: Tensor, h_prev: Tensor, readout: Readout) -> Tensor:
        self.steps += 1
        stop = (self.depths <= self.steps)[:, None].expand(h.shape[:2])
        if self.residual_rule is not None:
            stop = stop | (self.residual_rule(h, h_prev, readout) & ~self.kl[:, None])
        if self.kl_rule is not None:
            stop = stop | (self.kl_rule(h, h_prev, readout) & self.kl[:, None])
        return stop

    @classmethod
    def of(cls, params: Sequence[SamplingParams], depth: int, config, device) -> RowExit | None:
        """The rule for rows of `params` in a cache of loop depth `depth` (None: every row runs
        `depth` steps with no early exit, the lockstep loop)."""
        if not config.is_looped:
            return None
        depths = [p.depth(config) for p in params]
        eps = [p.adaptive or 0.0 for p in params]
        if all(d == depth for d in depths) and not any(eps):
            return None
        kl = [p.adaptive_criterion == "kl" for p in params]
        return cls(
            torch.tensor(depths, device=device),
            torch.tensor(eps, device=device),
            torch.tensor(kl, device=device),
            config.vocab_size,
        )


def new_generator(seed: int | None, device) -> torch.Generator | None:
    """A generator seeded with `seed` (None: draws use torch's global RNG)."""
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


def sample_rows(
    logits: Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator | None],
) -> list[int | RuntimeError]:
    """Each row's next token from logits (R, V) with its own params and generator (all greedy:
    one argmax). A row whose draw fails (NaN or inf logits make torch.multinomial raise) gets
    the error instead; the other rows keep their tokens."""
    if all(p.greedy for p in params):
        return logits.argmax(dim=-1).tolist()
    tokens: list[int | RuntimeError] = []
    for i, (row_params, generator) in enumerate(zip(params, generators)):
        try:
            tokens.append(int(sample_next(logits[i : i + 1], row_params, generator)))
        except RuntimeError as error:
            tokens.append(error)
    return tokens


class ModelDecoder:
    """Prefill and single-token steps of a PyTorch model over any `KVCache` (module
    docstring). compile: the fast step under `torch.compile`."""

    def __init__(self, model, compile: bool = False) -> None:
        self.model, self.compile = model, compile
        self.config = model.config

    def _steps(self, out, batch: int, device) -> Tensor:
        if out.loop is None:
            return torch.zeros(batch, dtype=torch.long, device=device)
        return out.loop.steps[:, -1]

    def prefill(
        self, cache: KVCache, ids: Tensor, valid: Tensor, rule: ExitRule | None = None
    ) -> tuple[Tensor, Tensor]:
        """Run left-padded prompts ids (B, P), valid (B, P) into `cache`."""
        out = self.model(ids, cache=cache, attention_mask=valid, last_only=True, exit_rule=rule)
        logits = out.logits[:, -1, : self.config.vocab_size]
        return logits, self._steps(out, ids.shape[0], ids.device)

    def step(
        self,
        cache: KVCache,
        tokens: Tensor,
        rule: ExitRule | None = None,
        valid: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Feed tokens (B,) as the next column of `cache`; valid (B,) marks the rows that hold
        a token (others are padding; the fast step, taken when `rule` is None, computes them
        anyway and leaves their column marked)."""
        batch = tokens.shape[0]
        if rule is None:
            logits = decode_step(self.model, cache, self.compile)(tokens)
            steps = torch.full((batch,), cache.num_steps, dtype=torch.long, device=tokens.device)
            return logits[:, : self.config.vocab_size], steps
        mask = torch.ones(batch, 1, dtype=torch.bool, device=tokens.device)
        if valid is not None:
            mask = valid[:, None]
        return self.prefill(cache, tokens[:, None], mask, rule)


class Backend(Protocol):
    """Logits of the next column (module docstring)."""

    def prefill(self, ids: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]: ...

    def step(self, tokens: Tensor) -> tuple[Tensor, Tensor]: ...


class CachedModel:
    """The PyTorch backend: `ModelDecoder` over one cache, with the exit rule of `params`
    (a new rule per forward: a `KLExit` keeps the previous step's distribution).
    use_cache=False recomputes the whole sequence for every token (the uncached baseline)."""

    def __init__(
        self,
        model,
        cache: KVCache,
        params: SamplingParams,
        compile: bool = False,
        use_cache: bool = True,
        cache_factory: Callable[[int, int], KVCache] | None = None,
    ) -> None:
        self.decoder = ModelDecoder(model, compile)
        self.cache, self.use_cache, self.cache_factory = cache, use_cache, cache_factory
        config = model.config
        eps, criterion = params.exit_threshold(config), params.adaptive_criterion
        self.rule = lambda: exit_rule(eps, criterion, config.vocab_size)
        self.sequence: Tensor | None = None
        self.sequence_valid: Tensor | None = None

    def _rule(self) -> ExitRule | None:
        return self.rule()

    def prefill(self, ids: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        self.sequence, self.sequence_valid = ids, valid
        return self.decoder.prefill(self.cache, ids, valid, self._rule())

    def step(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        if self.use_cache:
            return self.decoder.step(self.cache, tokens, self._rule())
        self.sequence = torch.cat([self.sequence, tokens[:, None]], dim=1)
        self.sequence_valid = torch.cat(
            [self.sequence_valid, torch.ones_like(tokens[:, None], dtype=torch.bool)], dim=1
        )
        batch, length = self.sequence.shape
        cache = self.cache_factory(batch, length)
        return self.decoder.prefill(cache, self.sequence, self.sequence_valid, self._rule())


class StopStrings:
    """`stop(tokens (B,)) -> bool (B,)`: whether each row's text, decoded from its new tokens,
    now holds one of `stops` (only the last tokens are decoded: enough for the longest)."""

    def __init__(self, tokenizer, stops: Sequence[str], batch: int) -> None:
        if tokenizer is None:
            raise PromptError("stop strings need a tokenizer to decode the text: pass one")
        self.tokenizer, self.stops = tokenizer, tuple(stops)
        self.window = max(len(s) for s in self.stops) + 8  # tokens hold >= 1 char but bytes
        self.rows: list[list[int]] = [[] for _ in range(batch)]

    def __call__(self, tokens: Tensor) -> Tensor:
        done = []
        for row, token in zip(self.rows, tokens.tolist()):
            row.append(token)
            text = self.tokenizer.decode(row[-self.window :])
            done.append(any(s in text for s in self.stops))
        return torch.tensor(done, device=tokens.device)


@dataclass
class Decoded:
    """What `decode` produced: tokens int64 (B, N) (after a row ends, `pad_token_id`) and the
    loop steps of the forward that produced each, int64 (B, N) (0 after a row ends)."""

    tokens: Tensor
    steps: Tensor


def decode(
    backend: Backend,
    ids: Tensor,
    valid: Tensor,
    params: SamplingParams,
    max_new_tokens: int,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    streamer=None,
    stop: Callable[[Tensor], Tensor] | None = None,
) -> Decoded:
    """Continue left-padded prompts ids, valid (B, P) by up to `max_new_tokens` tokens with
    `backend`, sampling under `params` (one generator for the batch, seeded by params.seed).
    A row ends at `eos_token_id` or when `stop(tokens)` says so; the loop ends when every row
    has. streamer: `put(tokens)` with each step's tokens (B,), then `end()`."""
    generator = new_generator(params.seed, ids.device)
    batch = ids.shape[0]
    logits, steps = backend.prefill(ids, valid)
    finished = torch.zeros(batch, dtype=torch.bool, device=ids.device)
    generated, steps_used = [], []
    for index in range(max_new_tokens):
        token = sample_next(logits, params, generator)
        token = torch.where(finished, pad_token_id, token)
        generated.append(token)
        steps_used.append(torch.where(finished, 0, steps.to(ids.device)))
        if streamer is not None:
            streamer.put(token.cpu())
        if eos_token_id is not None:
            finished = finished | (token == eos_token_id)
        if stop is not None:
            finished = finished | stop(token).to(finished.device)
        if index == max_new_tokens - 1 or bool(finished.all()):
            break
        logits, steps = backend.step(token)
    if streamer is not None:
        streamer.end()
    if not generated:
        empty = ids[:, :0]
        return Decoded(empty, empty)
    return Decoded(torch.stack(generated, dim=1), torch.stack(steps_used, dim=1))
