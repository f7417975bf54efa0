"""Autoregressive generation with the KV cache: prompt checks, left padding, sampling.

Policy for prompts (each violation is one `PromptError`): a prompt must hold at least one token,
every id must lie in [0, vocab_size) (a tensor must hold integers), and it must be shorter than
the model's context_length. The sampling options are a `SamplingParams`, checked before any
work (`parcae.infer.sampling`; num_steps is checked for a GPT too, which then ignores it); the
loop itself is `parcae.infer.decoder.decode`.
Generation stops after `max_new_tokens`, when every row has produced `eos_token_id`, or when the
context is full (prompt + generated = context_length), whichever comes first.

Batches of prompts of different lengths are left-padded; per-row positions and a padding mask
make every row generate what it generates alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from parcae.errors import PromptError
from parcae.infer.decoder import CachedModel, StopStrings, decode
from parcae.infer.sampling import SamplingParams
from parcae.model import CacheSharing, LanguageModel


@dataclass
class GenerationStats:
    """What a `generate` call did: loop steps per generated token (mean), tokens generated per
    row, and the cache's size in bytes."""

    mean_steps: float = 0.0
    new_tokens: list[int] = field(default_factory=list)
    cache_bytes: int = 0

    def adaptive_report(self, most: int) -> str:
        """The loop steps an adaptive-exit generation used per token, beside its maximum T."""
        return f"parcae: adaptive exit: {self.mean_steps:.2f} loop steps per token (at most {most})"


def check_prompt_ids(row: list[int], config, label: str = "prompt") -> None:
    """One prompt's policy (see the module docstring) for a model of `config`."""
    if not row:
        raise PromptError(f"{label} is empty: give at least one token")
    bad = [token for token in row if not 0 <= token < config.vocab_size]
    if bad:
        raise PromptError(
            f"{label} has token id {bad[0]} outside the vocabulary [0, {config.vocab_size})"
        )
    if len(row) >= config.context_length:
        raise PromptError(
            f"{label} has {len(row)} tokens; the model's context holds "
            f"{config.context_length}, so prompts must be shorter"
        )


def encode_text_prompt(text: str, tokenizer, add_bos: bool, source: str) -> list[int]:
    """`text` as token ids (BOS first with `add_bos`); `source` (the model path) names a model
    without a tokenizer in the error."""
    if tokenizer is None:
        raise PromptError(
            f"{source} has no tokenizer.json, so text prompts cannot be encoded: pass --prompt-ids"
        )
    try:  # a command line that is not UTF-8 reaches Python as lone surrogates
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PromptError("the prompt is not valid UTF-8 text") from None
    return tokenizer.encode_prompt(text) if add_bos else tokenizer.encode(text)


def prepare_prompts(
    model: LanguageModel, input_ids, attention_mask: Tensor | None = None, pad_token_id: int = 0
) -> tuple[Tensor, Tensor]:
    """Validate prompts and left-pad them: ids int64 (B, P) and valid bool (B, P).

    input_ids: a list of ints, a list of lists of ints (any lengths), or a tensor (P,) or
    (B, P); with a tensor, `attention_mask` (B, P) marks real tokens (left padding only).
    """
    device = next(model.parameters()).device
    if isinstance(input_ids, Tensor):
        if input_ids.dtype == torch.bool or input_ids.is_floating_point() or input_ids.is_complex():
            raise PromptError(
                f"input_ids must be integer token ids, got a {input_ids.dtype} tensor"
            )
        ids = input_ids.to(device=device, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise PromptError(f"input_ids must be (P,) or (B, P), got shape {tuple(ids.shape)}")
        if attention_mask is None:
            valid = torch.ones_like(ids, dtype=torch.bool)
        else:
            valid = attention_mask.to(device=device).bool()
            if valid.shape != ids.shape:
                raise PromptError(
                    f"attention_mask has shape {tuple(valid.shape)}, input_ids {tuple(ids.shape)}"
                )
            if bool((valid[:, :-1] & ~valid[:, 1:]).any()):
                raise PromptError("attention_mask must be left padding (0s, then 1s)")
        ids = torch.where(valid, ids, pad_token_id)
        rows = [ids[b][valid[b]].tolist() for b in range(ids.shape[0])]
    else:
        rows = _as_rows(input_ids)
        ids = valid = None
    if not rows:
        raise PromptError("no prompts given")
    config = model.config
    for b, row in enumerate(rows):
        check_prompt_ids(row, config, "prompt" if len(rows) == 1 else f"prompt {b}")
    if ids is None:
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        valid = torch.zeros(len(rows), width, dtype=torch.bool)
        for b, row in enumerate(rows):
            ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            valid[b, width - len(row) :] = True
        ids, valid = ids.to(device), valid.to(device)
    return ids, valid


def _as_rows(input_ids) -> list[list[int]]:
    if not isinstance(input_ids, Sequence) or isinstance(input_ids, (str, bytes)):
        raise PromptError(
            f"input_ids must be token ids (a tensor or lists of ints), "
            f"got {type(input_ids).__name__}"
        )
    if len(input_ids) == 0 or not isinstance(input_ids[0], (Sequence, Tensor)):
        input_ids = [input_ids]
    rows = []
    for row in input_ids:
        row = row.tolist() if isinstance(row, Tensor) else list(row)
        if not all(isinstance(token, int) and not isinstance(token, bool) for token in row):
            raise PromptError("token ids must be integers")
        rows.append(row)
    return rows


SAMPLING_KEYWORDS = ("temperature", "top_k", "top_p", "min_p", "seed", "num_steps", "adaptive")


@torch.no_grad()
def generate(
    model: LanguageModel,
    input_ids,
    max_new_tokens: int | None = None,
    num_steps: int | None = None,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    seed: int | None = None,
    streamer=None,
    *,
    sampling: SamplingParams | None = None,
    min_p: float | None = None,
    attention_mask: Tensor | None = None,
    pad_token_id: int | None = None,
    adaptive: float | None = None,
    adaptive_criterion: str = "residual",
    cache_sharing: str | CacheSharing | None = None,
    use_cache: bool = True,
    stats: GenerationStats | None = None,
    stop: Callable[[Tensor], Tensor] | None = None,
    tokenizer=None,
    compile: bool = False,
) -> Tensor:
    """Continue each prompt by up to `max_new_tokens` tokens; returns int64 (B, P + N): the
    left-padded prompts then the new tokens (after a row's EOS, `pad_token_id`).

    The sampling options come either as keywords or as one `sampling=SamplingParams(...)`
    (`parcae.infer.sampling`, where each is explained), not both:
    num_steps: loop steps T (default the config's default_depth; ignored by a GPT).
    temperature (default 1; 0 is greedy); top_k / top_p / min_p restrict sampling; seed makes
    sampling reproducible. adaptive: per-token early-exit threshold eps (T stays the max) on
    `adaptive_criterion`: `residual` ‖h_{t+1} - h_t‖ / ‖h_{t+1}‖ or `kl` between successive
    steps' next-token distributions (see `parcae.infer.engine`).
    streamer: an object with `put(tokens)` and `end()` (transformers' streamer protocol): it
    receives the prompt ids (B, P) once, then each step's new tokens (B,).
    cache_sharing: `full` (exact), `shared`, `ring:M` or `last:M` (see `parcae.model.cache`).
    use_cache=False recomputes the whole sequence for every token (the uncached baseline).
    stats: filled with what the call did.
    stop: called with each step's new tokens (B,); returns bool (B,), the rows that are done
    (a stop string appeared, say). A done row is padded from then on, as after EOS. The stop
    strings of `sampling.stop` are matched on text decoded with `tokenizer`.
    compile: run the single-token decode step under `torch.compile` (compiled once per call,
    a few seconds; without a C++ compiler on CPU, one warning and eager decoding). Without an
    adaptive threshold, decoding takes the single-token fast path (`parcae.model.decode`)
    either way; with one, the general forward (and `compile` is ignored).
    """
    keywords = dict(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        min_p=min_p,
        seed=seed,
        num_steps=num_steps,
        adaptive=adaptive,
    )
    if sampling is None:
        if max_new_tokens is None:
            raise PromptError("max_new_tokens is required (or pass sampling=SamplingParams(...))")
        options = {name: value for name, value in keywords.items() if value is not None}
        sampling = SamplingParams(
            max_new_tokens=max_new_tokens, adaptive_criterion=adaptive_criterion, **options
        )
    elif max_new_tokens is not None or any(v is not None for v in keywords.values()):
        raise PromptError(
            f"give the sampling options ({', '.join(('max_new_tokens',) + SAMPLING_KEYWORDS)}) "
            "either as keywords or as sampling=, not both"
        )
    if pad_token_id is None:
        pad_token_id = eos_token_id if eos_token_id is not None else 0
    ids, valid = prepare_prompts(model, input_ids, attention_mask, pad_token_id)
    config = model.config
    depth = sampling.depth(config) or None
    batch, prompt_len = ids.shape
    max_new_tokens = min(sampling.max_new_tokens, config.context_length - prompt_len)
    if sampling.stop:
        stop = _either(stop, StopStrings(tokenizer, sampling.stop, batch))
    if streamer is not None:
        streamer.put(ids.cpu())
    total = prompt_len + max_new_tokens
    cache = model.new_cache(batch, max(total - 1, prompt_len), depth, cache_sharing)
    backend = CachedModel(
        model,
        cache,
        sampling,
        compile,
        use_cache,
        lambda rows, length: model.new_cache(rows, length, depth, cache_sharing),
    )
    decoded = decode(
        backend, ids, valid, sampling, max_new_tokens, eos_token_id, pad_token_id, streamer, stop
    )
    new = decoded.tokens
    if stats is not None:
        produced = ~_after_eos(new, eos_token_id)
        stats.new_tokens = produced.sum(dim=1).tolist()
        stats.mean_steps = (
            float(decoded.steps[produced].float().mean()) if bool(produced.any()) else 0.0
        )
        stats.cache_bytes = cache.nbytes
    return torch.cat([ids, new], dim=1)


def _either(first, second):
    """A stop callable: done where either of two is (`first` may be None)."""
    if first is None:
        return second
    return lambda tokens: first(tokens).to(tokens.device) | second(tokens)


def _after_eos(new: Tensor, eos_token_id: int | None) -> Tensor:
    """bool (B, N): positions strictly after the row's first EOS (padding filler)."""
    if eos_token_id is None:
        return torch.zeros_like(new, dtype=torch.bool)
    is_eos = (new == eos_token_id).long()
    return (is_eos.cumsum(dim=1) - is_eos) > 0
