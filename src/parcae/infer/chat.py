"""The chat loop of `parcae chat`: messages in, replies out, with the model's chat template.

Each line read is a user message; the conversation so far is rendered with the chat template
(`parcae.data.chat_template`: the model's `tokenizer_config.json` template, else the plain one)
and the model's reply is generated until EOS, a stop sequence the template implies (the plain
template's next `User:` turn) or `max_new_tokens`. A reply is written as `assistant: TEXT`
followed by a blank line. `/reset` starts a new conversation, `/exit` (or the end of input)
leaves; both are announced at the start. When the rendered conversation no longer fits beside
the reply, its oldest messages are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TextIO

import torch

from parcae.data.chat_template import ChatTemplate
from parcae.data.tokenizer import Tokenizer
from parcae.infer.generate import GenerationStats, generate
from parcae.model.base import LanguageModel

BANNER = "Type a message and press Enter; /reset starts a new conversation, /exit leaves."
REPLY = "assistant: "


def reply(
    model: LanguageModel,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    messages: list[dict],
    max_new_tokens: int,
    **options,
) -> str:
    """The model's reply to `messages` (its text, cut at EOS and the template's stop
    sequences). `options`: `parcae.infer.generate.generate`'s sampling options (and `stats`)."""
    budget = max(model.config.context_length - max_new_tokens, 1)
    first = 0
    ids = template.prompt_ids(messages, tokenizer)
    while len(ids) > budget and first < len(messages) - 1:
        first += 1
        ids = template.prompt_ids(messages[first:], tokenizer)
    ids = ids[-budget:]
    stops = template.stop_sequences
    new: list[int] = []

    def collect(tokens: torch.Tensor) -> torch.Tensor:
        """Keeps each new token; done once a stop sequence appears in the text."""
        new.append(int(tokens[0]))
        done = bool(stops) and any(s in tokenizer.decode(new) for s in stops)
        return torch.tensor([done], device=tokens.device)

    generate(model, ids, max_new_tokens, eos_token_id=tokenizer.eos_id, stop=collect, **options)
    if tokenizer.eos_id in new:
        new = new[: new.index(tokenizer.eos_id)]
    text = tokenizer.decode(new)
    for sequence in stops:
        text = text.split(sequence)[0]
    return text.strip()


def chat_loop(
    model: LanguageModel,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    lines: Iterator[str | None],
    out: TextIO,
    max_new_tokens: int,
    prompt: str = "",
    on_bad_line=None,
    on_stats=None,
    **options,
) -> None:
    """Read user messages from `lines` until `/exit` or their end, writing each reply to
    `out` (module docstring). `prompt` is written before each read (`> ` at a terminal); a
    None line (undecodable) is passed to `on_bad_line(number)` and skipped; each reply's
    `GenerationStats` to `on_stats` when given."""
    out.write(BANNER + "\n\n")
    out.flush()
    messages: list[dict] = []
    number = 0
    while True:
        out.write(prompt)
        out.flush()
        line = next(lines, "")
        number += 1
        if line is None:
            if on_bad_line is not None:
                on_bad_line(number)
            continue
        if not line or line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            messages = []
            out.write("(new conversation)\n\n")
            continue
        messages.append({"role": "user", "content": line.strip()})
        stats = GenerationStats()
        text = reply(model, tokenizer, template, messages, max_new_tokens, stats=stats, **options)
        messages.append({"role": "assistant", "content": text})
        out.write(f"{REPLY}{text}\n\n")
        out.flush()
        if on_stats is not None:
            on_stats(stats)
