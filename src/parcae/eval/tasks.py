"""In-context-learning (ICL) tasks: their items, and the jsonl files that hold them.

A task is a `TaskSpec` (how to prompt and score it) and its items. The item types are those of
the DCLM eval bundle (ARCHITECTURE §5.2), one jsonl object per line:

- `multiple_choice`: {"query", "choices": [...], "gold": index}. The prediction is the choice
  whose continuation has the lowest mean loss after the query.
- `schema`: {"context_options": [...], "continuation", "gold": index}. The prediction is the
  context under which the shared continuation has the lowest mean loss.
- `language_modeling`: {"context", "continuation"}. Correct when the greedy argmax reproduces
  every continuation token.

A malformed line is refused with its file and line number.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from parcae.data.sources import iter_jsonl
from parcae.errors import DataError

MULTIPLE_CHOICE = "multiple_choice"
SCHEMA = "schema"
LANGUAGE_MODELING = "language_modeling"
TASK_TYPES = (MULTIPLE_CHOICE, SCHEMA, LANGUAGE_MODELING)


@dataclass(frozen=True)
class MultipleChoiceItem:
    query: str
    choices: tuple[str, ...]
    gold: int


@dataclass(frozen=True)
class SchemaItem:
    context_options: tuple[str, ...]
    continuation: str
    gold: int


@dataclass(frozen=True)
class LanguageModelingItem:
    context: str
    continuation: str


Item = MultipleChoiceItem | SchemaItem | LanguageModelingItem


@dataclass(frozen=True)
class TaskSpec:
    """How one task is prompted and scored.

    random_baseline: the accuracy of guessing, a fraction in [0, 1); centered accuracy is
    (acc - random_baseline) / (1 - random_baseline).
    """

    label: str
    task_type: str
    data_path: Path
    num_fewshot: int = 0
    continuation_delimiter: str = " "
    random_baseline: float = 0.0


@dataclass
class Task:
    spec: TaskSpec
    items: list[Item]


def _field(record: dict, name: str, kind: type | tuple[type, ...], where: str):
    if name not in record:
        raise DataError(f"{where}: missing field {name!r}")
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = (
            kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        )
        raise DataError(f"{where}: field {name!r} must be a {expected}, got {value!r:.60}")
    return value


def _strings(record: dict, name: str, where: str) -> tuple[str, ...]:
    values = _field(record, name, list, where)
    if len(values) < 2 or not all(isinstance(v, str) and v for v in values):
        raise DataError(f"{where}: field {name!r} must be a list of at least two non-empty strings")
    return tuple(values)


def _text(record: dict, name: str, where: str) -> str:
    value = _field(record, name, str, where)
    if not value:
        raise DataError(f"{where}: field {name!r} is empty")
    return value


def _gold(record: dict, options: int, where: str) -> int:
    gold = _field(record, "gold", int, where)
    if not 0 <= gold < options:
        raise DataError(f"{where}: gold {gold} is out of range for {options} options")
    return gold


def parse_item(record: object, task_type: str, where: str) -> Item:
    """The item of `task_type` in one decoded jsonl record; `where` ("file:line") names it in
    errors."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if task_type == MULTIPLE_CHOICE:
        query = _field(record, "query", str, where)
        choices = _strings(record, "choices", where)
        return MultipleChoiceItem(query, choices, _gold(record, len(choices), where))
    if task_type == SCHEMA:
        options = _strings(record, "context_options", where)
        continuation = _text(record, "continuation", where)
        return SchemaItem(options, continuation, _gold(record, len(options), where))
    if task_type == LANGUAGE_MODELING:
        context = _field(record, "context", str, where)
        return LanguageModelingItem(context, _text(record, "continuation", where))
    raise DataError(f"{where}: unknown task type {task_type!r}; use one of {', '.join(TASK_TYPES)}")


def read_items(path: Path, task_type: str, limit: int | None = None) -> list[Item]:
    """The items of a jsonl file (blank lines skipped; every line is checked). With `limit`,
    that many spread evenly over the file (item ⌊i·n/limit⌋ for i < limit), so that a task
    merged from parts (BIG-bench subtasks) keeps their proportions."""
    if not path.is_file():
        raise DataError(f"{path}: no such task file")
    items = [parse_item(record, task_type, where) for where, record in iter_jsonl(path)]
    if not items:
        raise DataError(f"{path}: no items")
    if limit is not None and limit < len(items):
        items = [items[i * len(items) // limit] for i in range(limit)]
    return items


def load_task(spec: TaskSpec, limit: int | None = None) -> Task:
    """The task with its items read from `spec.data_path` (`limit` of them, spread evenly)."""
    return Task(spec, read_items(spec.data_path, spec.task_type, limit))
