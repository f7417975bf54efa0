"""Turn an ICL item into the token sequences that score it (ARCHITECTURE §5.2).

Prompt text, with D the task's continuation delimiter and K few-shot examples, each rendered
with its gold answer and followed by a blank line:

    multiple_choice     {examples}{query}D{choice}               one sequence per choice
    schema              {examples}{context_option}D{continuation} one sequence per option
    language_modeling   {examples}{context.strip()}D{continuation} one sequence

The examples of item i are K other items of the task, drawn with `random.Random(1234 + i)`, so a
prompt is the same in every run and never contains its own item.

Each sequence is BOS + the tokens of the whole text. Its continuation is what follows the longest
common token prefix of the whole text and of the text before the continuation, so a token that
BPE merges across the boundary (" Paris" after "is") belongs to the continuation. When the
longest option of an item exceeds the model's context, every option loses the same number of
tokens from the front (truncated from the left), so that the longest keeps its last
`max_length` tokens and the options still share their prompt.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from parcae.data.tokenizer import Tokenizer
from parcae.eval.tasks import Item, LanguageModelingItem, MultipleChoiceItem, SchemaItem, Task

FEWSHOT_SEED = 1234
EXAMPLE_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Sequence:
    """tokens: BOS + prompt + continuation; the continuation is tokens[start:] (start >= 1)."""

    tokens: list[int]
    start: int


@dataclass(frozen=True)
class PromptedItem:
    """The sequences of one item (one per choice or context option; one for language modeling),
    the gold index (None for language modeling) and whether any sequence was truncated."""

    sequences: list[Sequence]
    gold: int | None
    truncated: bool


def fewshot_indices(num_items: int, index: int, num_fewshot: int) -> list[int]:
    """The few-shot examples of item `index`: min(num_fewshot, num_items - 1) distinct other
    items, drawn with a seed of their own (`FEWSHOT_SEED + index`)."""
    others = [i for i in range(num_items) if i != index]
    return random.Random(FEWSHOT_SEED + index).sample(others, min(num_fewshot, len(others)))


def answered(item: Item, delimiter: str) -> str:
    """A few-shot example: the item with its gold answer."""
    if isinstance(item, MultipleChoiceItem):
        return f"{item.query}{delimiter}{item.choices[item.gold]}"
    if isinstance(item, SchemaItem):
        return f"{item.context_options[item.gold]}{delimiter}{item.continuation}"
    return f"{item.context.strip()}{delimiter}{item.continuation}"


def options(item: Item, delimiter: str) -> list[tuple[str, str]]:
    """(text before the continuation, continuation) per option of the item."""
    if isinstance(item, MultipleChoiceItem):
        return [(f"{item.query}{delimiter}", choice) for choice in item.choices]
    if isinstance(item, SchemaItem):
        return [(f"{option}{delimiter}", item.continuation) for option in item.context_options]
    return [(f"{item.context.strip()}{delimiter}", item.continuation)]


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _sequence(tokenizer: Tokenizer, prompt: str, continuation: str) -> Sequence:
    """BOS + the tokens of prompt + continuation, the continuation marked."""
    whole = [tokenizer.bos_id, *tokenizer.encode(prompt + continuation)]
    start = common_prefix(whole, [tokenizer.bos_id, *tokenizer.encode(prompt)])
    return Sequence(whole, min(start, len(whole) - 1))  # at least the last token is scored


def _truncate(sequences: list[Sequence], max_length: int) -> list[Sequence]:
    """Cut the same number of tokens from the front of every option, so that the longest fits
    and the options keep the prefix they share (one that still does not fit is cut alone)."""
    first = sequences[0].tokens
    shared = min(
        min(s.start for s in sequences), *(common_prefix(first, s.tokens) for s in sequences)
    )
    cut = min(max(len(s.tokens) for s in sequences) - max_length, shared - 1)
    cut = max(cut, 0)
    kept = []
    for s in sequences:
        alone = max(len(s.tokens) - cut - max_length, 0)
        kept.append(Sequence(s.tokens[cut + alone :], max(s.start - cut - alone, 1)))
    return kept


def prompt_item(task: Task, index: int, tokenizer: Tokenizer, max_length: int) -> PromptedItem:
    """The token sequences of item `index` of `task`, at most `max_length` tokens each."""
    spec, item = task.spec, task.items[index]
    shots = fewshot_indices(len(task.items), index, spec.num_fewshot)
    examples = "".join(
        answered(task.items[i], spec.continuation_delimiter) + EXAMPLE_SEPARATOR for i in shots
    )
    whole = [
        _sequence(tokenizer, examples + prompt, continuation)
        for prompt, continuation in options(item, spec.continuation_delimiter)
    ]
    truncated = max(len(s.tokens) for s in whole) > max_length
    sequences = _truncate(whole, max_length) if truncated else whole
    gold = None if isinstance(item, LanguageModelingItem) else item.gold
    return PromptedItem(sequences, gold, truncated)
