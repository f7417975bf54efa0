"""Streaming decoded text as tokens arrive (transformers' `put` / `end` streamer protocol)."""

from __future__ import annotations

import sys
from typing import TextIO

from torch import Tensor

from parcae.data.tokenizer import Tokenizer


class TextStreamer:
    """Writes the text of each new token of row 0 to `out` as soon as it decodes cleanly.

    The first `put` (the prompt) is skipped. Byte-level BPE may split a character over tokens:
    text ending in U+FFFD is held back until the character completes. Stops writing after
    `eos_id`; without a tokenizer, writes token ids separated by spaces.
    """

    def __init__(
        self, tokenizer: Tokenizer | None, out: TextIO = sys.stdout, eos_id: int | None = None
    ) -> None:
        self.tokenizer, self.out, self.eos_id = tokenizer, out, eos_id
        self.ids: list[int] = []
        self.written = 0
        self.seen_prompt = self.stopped = False

    def put(self, value: Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        token = int(value.reshape(-1)[0])
        if self.stopped:
            return
        if token == self.eos_id:
            self.stopped = True
            return
        self.ids.append(token)
        if self.tokenizer is None:
            self.out.write(f"{' ' if len(self.ids) > 1 else ''}{token}")
        else:
            text = self.tokenizer.decode(self.ids)
            if text.endswith("\ufffd"):
                return
            self.out.write(text[self.written :])
            self.written = len(text)
        self.out.flush()

    def end(self) -> None:
        if self.tokenizer is not None:
            text = self.tokenizer.decode(self.ids)
            self.out.write(text[self.written :])
            self.written = len(text)
        self.out.write("\n")
        self.out.flush()

    @property
    def text(self) -> str:
        """Everything generated so far (EOS excluded)."""
        return self.tokenizer.decode(self.ids) if self.tokenizer else " ".join(map(str, self.ids))
