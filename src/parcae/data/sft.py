"""Chat-tuning data: OpenAI-style conversations, rendered with a chat template, loss on the
assistant's tokens only.

Input: a JSONL file, one conversation a line, `{"messages": [{"role", "content"}, ...]}` with at
least one assistant message. Each conversation is rendered with the model's chat template
(`parcae.data.chat_template`; `PLAIN_TEMPLATE` for a model without one) turn by turn: for the
i-th message, when it is the assistant's,

    prompt_i = render(messages[:i], add_generation_prompt=True)
    full_i   = render(messages[:i + 1], add_generation_prompt=False)

the text of `full_i` after `prompt_i` is the reply (trained on), the text of `prompt_i` after
`full_{i-1}` the prompt (not trained on); a template for which one is not a prefix of the next
is refused. Each piece is encoded on its own, so the boundary is exact and the prompt's tokens
are those `parcae chat` and `parcae serve` feed the model. Messages after the last assistant
message are dropped.

Packing: conversations go in file order into rows of S + 1 tokens (S = seq_len), a row taking
conversations while they fit, the rest padded. Row k gives inputs `x[:-1]` and targets
`y_t = x[t+1]` where token t+1 is a reply token, else -100 (ignored by the loss: prompts and
padding contribute exactly zero loss and gradient, `parcae.model.loss`). A conversation longer
than S + 1 tokens is refused with its line. Conversations go to `train` or `val` by
`parcae.data.split.split_of` of their JSON line, as documents do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from parcae.data.chat_template import ChatTemplate
from parcae.data.loader import Batch, RowLoader
from parcae.data.split import split_of
from parcae.data.tokenizer import Tokenizer
from parcae.errors import DataError, PromptError
from parcae.model.loss import IGNORE_INDEX

PREFIX = "sft:"  # `data=sft:FILE.jsonl` in a training config


def render_example(
    messages: list[dict], template: ChatTemplate, tokenizer: Tokenizer
) -> tuple[list[int], list[bool]]:
    """(token ids, whether each token is a reply token) of one conversation (module
    docstring). PromptError for messages the template refuses or that hold no reply."""
    ids: list[int] = []
    trained: list[bool] = []
    done = ""
    for index, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)):
            raise PromptError(f"messages[{index}] needs a string 'role' and a 'content'")
        if message["role"] != "assistant":
            continue
        prompt = template.render(messages[:index], add_generation_prompt=True)
        full = template.render(messages[: index + 1], add_generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise PromptError(
                "the chat template does not render a conversation as a prefix of its "
                "continuation; it cannot be used to mark the assistant's tokens"
            )
        for text, reply in ((prompt[len(done) :], False), (full[len(prompt) :], True)):
            piece = template.encode(text, tokenizer)
            ids += piece
            trained += [reply] * len(piece)
        done = full
    if not any(trained):
        raise PromptError("no assistant message with content: nothing to train on")
    return ids, trained


@dataclass
class Conversations:
    """One split's packed rows: `tokens` (R, S + 1) int64 ids and `trained` (R, S + 1) bool."""

    tokens: np.ndarray
    trained: np.ndarray

    def batch(self, rows: list[int]) -> Batch:
        """Inputs (B, S) and targets (B, S), -100 where the target is not a reply token."""
        tokens = torch.from_numpy(self.tokens[rows])
        trained = torch.from_numpy(self.trained[rows])
        targets = tokens[:, 1:].masked_fill(~trained[:, 1:], IGNORE_INDEX)
        return Batch(tokens[:, :-1].contiguous(), targets.contiguous())


def _pack(examples: list[tuple[list[int], list[bool]]], width: int, pad_id: int) -> Conversations:
    """Examples into rows of `width` tokens, in order, padding a row when the next one does
    not fit (module docstring)."""
    tokens, trained = [], []
    for ids, mask in examples:
        if not tokens or len(tokens[-1]) + len(ids) > width:
            tokens.append([])
            trained.append([])
        tokens[-1] += ids
        trained[-1] += mask
    padded = np.full((len(tokens), width), pad_id, dtype=np.int64)
    marks = np.zeros((len(tokens), width), dtype=bool)
    for row, (ids, mask) in enumerate(zip(tokens, trained)):
        padded[row, : len(ids)] = ids
        marks[row, : len(mask)] = mask
    return Conversations(padded, marks)


def read_conversations(
    path: str | os.PathLike,
    template: ChatTemplate,
    tokenizer: Tokenizer,
    seq_len: int,
    val_fraction: float,
) -> dict[str, Conversations]:
    """The `train` and `val` rows of the JSONL file at `path` (module docstring); DataError,
    with the file and line, for a line that is not a conversation or is too long, and for a
    split left empty."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such conversation file (expected JSONL of messages)")
    examples: dict[str, list] = {"train": [], "val": []}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{where}: not JSON ({error.msg})") from None
            messages = record.get("messages") if isinstance(record, dict) else None
            if not isinstance(messages, list):
                raise DataError(f'{where}: expected {{"messages": [...]}}')
            try:
                ids, trained = render_example(messages, template, tokenizer)
            except PromptError as error:
                raise DataError(f"{where}: {error}") from None
            if len(ids) > seq_len + 1:
                raise DataError(
                    f"{where}: the conversation is {len(ids)} tokens, more than seq_len + 1 = "
                    f"{seq_len + 1}; raise seq_len or shorten it"
                )
            examples[split_of(line.strip(), val_fraction)].append((ids, trained))
    for split, found in examples.items():
        if not found:
            raise DataError(
                f"{path}: no conversation falls in the {split} split (val_fraction "
                f"{val_fraction}); add conversations or change val_fraction"
            )
    return {split: _pack(found, seq_len + 1, tokenizer.pad_id) for split, found in examples.items()}


class ConversationLoader(RowLoader):
    """Infinite shuffled batches of a split's packed conversation rows, for one rank
    (`parcae.data.loader.RowLoader` gives the order and the resumable position)."""

    def __init__(
        self,
        rows: Conversations,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        tokenizer_hash: str = "",
    ):
        super().__init__(batch_size, seed, rank, world_size)
        self.rows, self.rows_per_epoch = rows, len(rows.tokens)
        self.identity = {
            "seq_len": rows.tokens.shape[1] - 1,
            "split": "train",
            "tokens": int(rows.tokens.size),
            "tokenizer_hash": tokenizer_hash,
        }

    def make_batch(self, rows: list[int]) -> Batch:
        return self.rows.batch(rows)


def iter_conversation_batches(
    rows: Conversations, batch_size: int, max_batches: int | None = None
) -> Iterator[Batch]:
    """Every row once, in order, `batch_size` rows a batch (the last may be smaller)."""
    starts = range(0, len(rows.tokens), batch_size)
    if max_batches is not None:
        starts = starts[:max_batches]
    for start in starts:
        yield rows.batch(list(range(start, min(start + batch_size, len(rows.tokens)))))
