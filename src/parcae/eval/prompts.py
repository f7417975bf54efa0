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
BPE merges across the boundary (" Paris" after "is") belongs to the continuation. A sequence
longer than the model's context keeps its last `max_length` tokens (truncated from the left).
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


def _sequence(
    tokenizer: Tokenizer, prompt: str, continuation: str, max_length: int
) -> tuple[Sequence, bool]:
    """The sequence of prompt + continuation, and whether it was truncated."""
    whole = [tokenizer.bos_id, *tokenizer.encode(prompt + continuation)]
    start = common_prefix(whole, [tokenizer.bos_id, *tokenizer.encode(prompt)])
    start = min(start, len(whole) - 1)  # at least the last token is continuation
    cut = max(len(whole) - max_length, 0)
    return Sequence(whole[cut:], max(start - cut, 1)), cut > 0


def prompt_item(task: Task, index: int, tokenizer: Tokenizer, max_length: int) -> PromptedItem:
    """The token sequences of item `index` of `task`, at most `max_length` tokens each."""
    spec, item = task.spec, task.items[index]
    shots = fewshot_indices(len(task.items), index, spec.num_fewshot)
    examples = "".join(
        answered(task.items[i], spec.continuation_delimiter) + EXAMPLE_SEPARATOR for i in shots
    )
    sequences, cuts = zip(
        *(
            _sequence(tokenizer, examples + prompt, continuation, max_length)
            for prompt, continuation in options(item, spec.continuation_delimiter)
        )
    )
    gold = None if isinstance(item, LanguageModelingItem) else item.gold
    return PromptedItem(list(sequences), gold, any(cuts))
