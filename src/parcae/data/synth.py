"""Synthetic reasoning data generated on the fly: `data: synth:<task>[?<option>=<value>&...]`.

Tasks and their options are in `parcae.data.synth_tasks` (`phop`, `varchain`, `add`). The
difficulty option takes a value or a range, `synth:phop?hops=1-4` (every integer in it, drawn
uniformly per item); the others take an integer, `synth:phop?hops=2&n=32&symbols=8`.

Items:
- Vocabulary: character level, the three special tokens then the 41 characters of
  `synth_tasks.ALPHABET` (`tokenizer()`, the same for every task: 44 ids).
- Split: an item belongs to `val` when `sha256(prompt) mod 8 == 0` (1/8 of the items), else to
  `train`. A draw that lands in the other split is redrawn, so the splits are disjoint by
  construction and the same text is never in both.
- Determinism: item `index` of a split is drawn by `default_rng((split id, seed, index))`, so it
  depends on nothing else (not the batch size, the number of processes or what was drawn
  before). Training rows use the run's `seed`; validation and the accuracy eval use seed 0, so
  every training seed is scored on the same items.
- Row layout (`encode`): `<|bos|> prompt answer <|eos|>`, padded with `<|pad|>` to the row
  length; targets are the next tokens on the answer and the EOS only (-100 elsewhere), so the
  loss is the answer's and argmax on every target equals greedy decoding of the answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers

from parcae.data.loader import Batch
from parcae.data.synth_tasks import ALPHABET, Item, Task, check_task
from parcae.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from parcae.errors import ConfigError, DataError

PREFIX = "synth:"
SPLITS = {"train": 0, "val": 1}
VAL_MODULUS = 8  # 1 item in 8 is a validation item
EVAL_SEED = 0
MAX_REDRAWS = 1000
IGNORE = -100


def is_synth(spec: str) -> bool:
    return spec.startswith(PREFIX)


@dataclass(frozen=True)
class SynthSpec:
    """A parsed `synth:` spec: the task, its difficulties (ascending) and its other options."""

    name: str
    difficulties: tuple[int, ...]
    options: dict[str, int] = field(default_factory=dict)

    @property
    def task(self) -> Task:
        return check_task(self.name)

    @property
    def max_chars(self) -> int:
        """The most characters (prompt + answer) of any item of this spec."""
        return max(self.task.max_chars(d, self.options) for d in self.difficulties)

    @property
    def max_tokens(self) -> int:
        """The row length every item fits in: BOS, the characters and EOS, less one (inputs
        and targets are the row shifted by one)."""
        return self.max_chars + 1


def _integer(name: str, text: str, low: int, high: int) -> int:
    if not text.isdigit() or not low <= int(text) <= high:
        raise ConfigError(
            f"synthetic option {name}={text!r}: must be an integer in [{low}, {high}]"
        )
    return int(text)


def parse_spec(spec: str) -> SynthSpec:
    """`synth:<task>[?<difficulty>=<lo>[-<hi>]&<option>=<int>...]` -> SynthSpec."""
    if not is_synth(spec):
        raise ConfigError(f"{spec!r} is not a synthetic data spec ({PREFIX}<task>)")
    name, _, query = spec[len(PREFIX) :].partition("?")
    task = check_task(name)
    low, high = task.default_difficulties
    options = {key: default for key, (default, _, _) in task.options.items()}
    for pair in query.split("&") if query else []:
        key, equals, value = pair.partition("=")
        if not equals:
            raise ConfigError(f"{spec}: option {pair!r} has no value (write {pair}=<integer>)")
        if key == task.difficulty_key:
            first, _, last = value.partition("-")
            low = _integer(key, first, *task.difficulty_range)
            high = _integer(key, last, low, task.difficulty_range[1]) if last else low
        elif key in task.options:
            options[key] = _integer(key, value, *task.options[key][1:])
        else:
            known = ", ".join([task.difficulty_key, *task.options])
            raise ConfigError(f"{spec}: unknown option {key!r} for {name} (options: {known})")
    return SynthSpec(name, tuple(range(low, high + 1)), options)


def tokenizer() -> Tokenizer:
    """The character-level tokenizer of every task: specials 0-2, then ALPHABET's characters
    (a byte-level BPE without merges, so it saves, loads and decodes like any other)."""
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, *ALPHABET])}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return Tokenizer(backend)


def split_of(prompt: str) -> str:
    """`val` for 1 prompt in VAL_MODULUS by its sha256, else `train`."""
    digest = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big")
    return "val" if digest % VAL_MODULUS == 0 else "train"


def draw(spec: SynthSpec, split: str, seed: int, index: int, difficulty: int | None = None) -> Item:
    """Item `index` of `split` for `seed`: difficulty `difficulty`, or uniform over the spec's."""
    rng = np.random.default_rng((SPLITS[split], seed, index))
    for _ in range(MAX_REDRAWS):
        level = difficulty if difficulty is not None else int(rng.choice(spec.difficulties))
        item = spec.task.generate(rng, level, spec.options)
        if split_of(item.prompt) == split:
            return item
    raise DataError(f"{spec.name}: no {split} item found in {MAX_REDRAWS} draws")


def encode(tok: Tokenizer, items: list[Item], length: int | None = None) -> Batch:
    """Rows `<|bos|> prompt answer <|eos|>` of `length` tokens (default: the longest item),
    padded; targets on the answer and EOS only. inputs, targets: (len(items), length) int64."""
    prompts = tok.encode_batch([item.prompt for item in items])
    answers = tok.encode_batch([item.answer for item in items])
    longest = max(len(p) + len(a) + 1 for p, a in zip(prompts, answers))
    length = longest if length is None else length
    if longest > length:
        raise ConfigError(f"seq_len {length} is too short for these items (need {longest})")
    inputs = torch.full((len(items), length), tok.pad_id, dtype=torch.int64)
    targets = torch.full((len(items), length), IGNORE, dtype=torch.int64)
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        tokens = [tok.bos_id, *prompt, *answer, tok.eos_id]
        inputs[row, : len(tokens) - 1] = torch.tensor(tokens[:-1])
        targets[row, len(prompt) : len(tokens) - 1] = torch.tensor(tokens[len(prompt) + 1 :])
    return Batch(inputs, targets)


class SynthLoader:
    """Infinite training batches of one rank: step t's global rows are [t·B·W, (t+1)·B·W),
    rank r takes B of them from t·B·W + r·B (as `TokenLoader`), row g is `draw(train, seed, g)`.
    The state is the number of global rows consumed."""

    def __init__(
        self,
        spec: str,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.spec_text, self.spec = spec, parse_spec(spec)
        if seq_len < self.spec.max_tokens:
            raise ConfigError(
                f"seq_len {seq_len} is too short for {spec} (its items need "
                f"{self.spec.max_tokens}); set seq_len: {self.spec.max_tokens}"
            )
        self.tokenizer = tokenizer()
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rank, self.world_size = rank, world_size
        self.cursor = 0

    def next_batch(self) -> Batch:
        first = self.cursor + self.rank * self.batch_size
        rows = range(first, first + self.batch_size)
        self.cursor += self.batch_size * self.world_size
        items = [draw(self.spec, "train", self.seed, g) for g in rows]
        return encode(self.tokenizer, items, self.seq_len)

    def state_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "seed": self.seed, "spec": self.spec_text}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at `state["cursor"]`; refuses a state of another spec or seed."""
        for key in ("seed", "spec"):
            if state.get(key) != self.state_dict()[key]:
                raise DataError(
                    f"loader state has {key}={state.get(key)!r}, this loader "
                    f"{self.state_dict()[key]!r}; cannot resume"
                )
        self.cursor = int(state["cursor"])


def val_items(spec: SynthSpec, count: int, difficulty: int | None = None) -> list[Item]:
    """The first `count` validation items (seed EVAL_SEED), of one difficulty or mixed."""
    return [draw(spec, "val", EVAL_SEED, index, difficulty) for index in range(count)]


def iter_val_batches(
    spec: str, batch_size: int, seq_len: int, max_batches: int | None, items: int = 512
) -> Iterator[Batch]:
    """The first `items` validation items, mixed difficulties, `batch_size` rows a batch (at
    most `max_batches` batches)."""
    parsed, tok = parse_spec(spec), tokenizer()
    starts = range(0, items, batch_size)
    for start in starts if max_batches is None else starts[:max_batches]:
        chunk = [
            draw(parsed, "val", EVAL_SEED, i) for i in range(start, min(start + batch_size, items))
        ]
        yield encode(tok, chunk, seq_len)
