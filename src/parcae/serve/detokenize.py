"""Incremental text of a generated token stream, with stop sequences matched on the text.

`TextAssembler.feed(token_id)` returns the text that became final with that token: the decoded
text is held back while it ends in U+FFFD (byte-level BPE may split a character over tokens)
or in a prefix of a stop sequence (which the next tokens may complete). When a stop sequence
appears in the decoded text, the text is cut before it and `stopped` is set; the caller ends the
request. `finish()` returns what was held back once the stream ended without a stop sequence.

Without a tokenizer (a checkpoint that has none), the text is the token ids separated by spaces,
as `parcae generate --prompt-ids` prints them.
"""

from __future__ import annotations


class TextAssembler:
    def __init__(self, tokenizer, stops: list[str] | tuple[str, ...] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = [stop for stop in stops if stop]
        self.ids: list[int] = []
        self.emitted = 0  # characters of the text sent so far
        self.stopped = False
        self.text = ""  # the final text once stopped or finished

    def _decode(self) -> str:
        if self.tokenizer is None:
            return " ".join(map(str, self.ids))
        return self.tokenizer.decode(self.ids)

    def feed(self, token_id: int) -> str:
        """The new final text after `token_id` ('' while held back or once stopped)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text = self._decode()
        cuts = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        if cuts:
            self.stopped = True
            return self._emit(text[: min(cuts)])
        safe = len(text)
        if text.endswith("\ufffd"):
            safe = len(text.rstrip("\ufffd"))
        held = 0  # the longest suffix that may begin a stop sequence
        for stop in self.stops:
            for length in range(min(len(stop) - 1, safe), held, -1):
                if text[safe - length : safe] == stop[:length]:
                    held = length
                    break
        return self._emit(text[: safe - held], final=False)

    def finish(self) -> str:
        """The rest of the text at the end of the stream (nothing once stopped)."""
        if self.stopped:
            return ""
        return self._emit(self._decode())

    def _emit(self, text: str, final: bool = True) -> str:
        delta = text[self.emitted :] if len(text) > self.emitted else ""
        self.emitted = max(self.emitted, len(text))
        if final:
            self.text = text
        return delta
