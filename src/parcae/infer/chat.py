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

from parcae.data.chat_template import ChatTemplate
from parcae.data.tokenizer import Tokenizer
from parcae.infer.generate import GenerationStats, generate
from parcae.infer.sampling import SamplingParams
from parcae.model.base import LanguageModel

BANNER = "Type a message and press Enter; /reset starts a new conversation, /exit leaves."
REPLY = "assistant: "


def reply(
    model: LanguageModel,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    messages: list[dict],
    params: SamplingParams,
    **options,
) -> str:
    """The model's reply to `messages` (its text, cut at EOS and the template's stop
    sequences, which join `params.stop`). `options`: `parcae.infer.generate.generate`'s
    other keywords (`stats`, `cache_sharing`, `compile`)."""
    budget = max(model.config.context_length - params.max_new_tokens, 1)
    first = 0
    ids = template.prompt_ids(messages, tokenizer)
    while len(ids) > budget and first < len(messages) - 1:
        first += 1
        ids = template.prompt_ids(messages[first:], tokenizer)
    ids = ids[-budget:]
    stops = tuple(dict.fromkeys(params.stop + tuple(template.stop_sequences)))
    out = generate(
        model,
        ids,
        sampling=params.replace(stop=stops),
        eos_token_id=tokenizer.eos_id,
        tokenizer=tokenizer,
        **options,
    )
    new = out[0, len(ids) :].tolist()
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
    params: SamplingParams,
    lines: Iterator[str | None],
    out: TextIO,
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
        text = reply(model, tokenizer, template, messages, params, stats=stats, **options)
        messages.append({"role": "assistant", "content": text})
        out.write(f"{REPLY}{text}\n\n")
        out.flush()
        if on_stats is not None:
            on_stats(stats)


def read_lines(stream) -> Iterator[str | None]:
    """The lines of `stream` (a text stream such as sys.stdin), None for a line that does not
    decode in the stream's encoding. Bytes are read from its binary buffer when it has one,
    line by line, so that a bad line loses only itself (a text stream would fail on the whole
    chunk it read ahead)."""
    raw = getattr(stream, "buffer", None)
    if raw is None:  # a text-only stream (io.StringIO in tests)
        yield from iter(stream.readline, "")
        return
    encoding = getattr(stream, "encoding", None) or "utf-8"
    for line in iter(raw.readline, b""):
        try:
            yield line.decode(encoding).replace("\r\n", "\n")
        except UnicodeDecodeError:
            yield None


def chat_session(
    model: LanguageModel,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    params: SamplingParams,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    **options,
) -> None:
    """`parcae chat` on three streams: `chat_loop` over the lines of `stdin` (`> ` before
    each read at a terminal); a line that is not valid text in stdin's encoding is skipped
    with one warning on `stderr`, and with an adaptive exit each reply's loop steps per token
    are reported there. `options`: `generate`'s other keywords."""
    encoding = getattr(stdin, "encoding", None) or "utf-8"

    def bad_line(number: int) -> None:
        stderr.write(
            f"parcae: warning: line {number} of stdin is not valid {encoding} text; skipped it\n"
        )

    report = None
    if params.adaptive is not None:
        most = params.num_steps or model.config.default_depth or 1

        def report(stats: GenerationStats) -> None:
            stderr.write(stats.adaptive_report(most) + "\n")

    interactive = stdin.isatty() if hasattr(stdin, "isatty") else False
    chat_loop(
        model,
        tokenizer,
        template,
        params,
        read_lines(stdin),
        stdout,
        prompt="> " if interactive else "",
        on_bad_line=bad_line,
        on_stats=report,
        **options,
    )
