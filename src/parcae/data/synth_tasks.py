"""The synthetic reasoning tasks: item generators, one per task, with difficulty as a parameter.

Each generator maps (a numpy Generator, a difficulty d, the task's options) to an item, the text
`prompt` and the text `answer` the model must produce after it. All texts use the characters of
`ALPHABET` only (a character-level vocabulary, `parcae.data.synth`).

- `phop` (p-hop induction; Sanford et al. 2024, used by Saunshi et al. 2025 "Reasoning with
  Latent Thoughts"): a sequence x of n symbols with no symbol repeated next to itself. One hop
  from position i goes to the position after the last earlier occurrence of x_i:
  `hop(i) = 1 + max{j < i : x_j = x_i}`. The answer is x at `hop^d(n - 1)`. The prompt is
  `"<d>:<x>="`. Items are redrawn until all d hops exist and the answer differs from the
  symbol reached after every fewer number of hops, so fewer than d hops never gives it.
- `varchain` (variable-assignment chains): a chain `v1=<digit>; v2=v1; ...; vd=v(d-1)` of d
  assignments, a distractor chain of the same length from another digit, the 2d statements in
  random order, then the query `vd?`; the answer is the chain's digit. Variables are distinct
  letters, so d <= 13.
- `add` (multi-digit addition): two d-digit numbers written least-significant digit first,
  `"<a reversed>+<b reversed>="`, answer the sum written least-significant digit first (d or
  d + 1 digits). Reversed digits let a causal model emit each digit after the carries it needs.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from parcae.errors import ConfigError

SYMBOLS = string.ascii_lowercase
DIGITS = string.digits
PUNCTUATION = "=;?+:"
ALPHABET = DIGITS + SYMBOLS + PUNCTUATION
"""Every character any task writes (41): the vocabulary is these and the special tokens."""


@dataclass(frozen=True)
class Item:
    """One example: the model reads `prompt` and must write `answer`."""

    prompt: str
    answer: str
    difficulty: int


Generate = Callable[[np.random.Generator, int, dict[str, int]], Item]


@dataclass(frozen=True)
class Task:
    """A task: its generator, the name of its difficulty option and the range it allows, its
    default difficulties, its other integer options with their defaults and ranges, and the most
    characters an item of difficulty d (with options) can take (prompt + answer)."""

    generate: Generate
    difficulty_key: str
    difficulty_range: tuple[int, int]
    default_difficulties: tuple[int, int]
    options: dict[str, tuple[int, int, int]]  # name -> (default, min, max)
    max_chars: Callable[[int, dict[str, int]], int]


def _phop(rng: np.random.Generator, hops: int, options: dict[str, int]) -> Item:
    n, k = options["n"], options["symbols"]
    while True:
        # no symbol next to itself: each draw avoids the previous one
        steps = rng.integers(1, k, size=n - 1)
        x = np.cumsum(np.concatenate([[rng.integers(k)], steps])) % k
        position, seen = n - 1, []
        for _ in range(hops):
            earlier = np.flatnonzero(x[:position] == x[position])
            if earlier.size == 0:
                break
            seen.append(x[position])
            position = int(earlier[-1]) + 1
        else:
            answer = x[position]
            if answer not in seen:
                text = "".join(SYMBOLS[s] for s in x)
                return Item(f"{hops}:{text}=", SYMBOLS[answer], hops)


def _varchain(rng: np.random.Generator, length: int, options: dict[str, int]) -> Item:
    letters = rng.permutation(len(SYMBOLS))[: 2 * length]
    digits = rng.permutation(10)[:2]
    statements = []
    for chain, digit in zip((letters[:length], letters[length:]), digits):
        names = [SYMBOLS[i] for i in chain]
        statements.append(f"{names[0]}={digit}")
        statements.extend(f"{names[i]}={names[i - 1]}" for i in range(1, length))
    order = rng.permutation(len(statements))
    query = SYMBOLS[letters[length - 1]]
    prompt = ";".join(statements[i] for i in order) + f";{query}?"
    return Item(prompt, str(digits[0]), length)


def _add(rng: np.random.Generator, digits: int, options: dict[str, int]) -> Item:
    low = 0 if digits == 1 else 10 ** (digits - 1)
    a, b = (int(v) for v in rng.integers(low, 10**digits, size=2))
    return Item(f"{str(a)[::-1]}+{str(b)[::-1]}=", str(a + b)[::-1], digits)


TASKS: dict[str, Task] = {
    "phop": Task(
        _phop,
        "hops",
        (1, 9),
        (1, 4),
        {"n": (24, 4, 256), "symbols": (6, 3, len(SYMBOLS))},
        lambda d, options: options["n"] + 4,
    ),
    "varchain": Task(
        _varchain, "length", (1, len(SYMBOLS) // 2), (1, 6), {}, lambda d, options: 8 * d + 3
    ),
    "add": Task(_add, "digits", (1, 18), (1, 4), {}, lambda d, options: 3 * d + 3),
}


def check_task(name: str) -> Task:
    """The task called `name`, or a ConfigError listing the tasks."""
    if name not in TASKS:
        raise ConfigError(f"unknown synthetic task {name!r} (tasks: {', '.join(TASKS)})")
    return TASKS[name]
