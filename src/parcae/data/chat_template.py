"""Turning chat messages into a prompt: the tokenizer's own template, else a plain one.

A model directory (or the run directory holding it) may carry a `tokenizer_config.json` with a
`chat_template` (a Jinja template, as transformers writes it). When it does and `jinja2` is
installed, the messages are rendered with it in a sandbox, with `messages`,
`add_generation_prompt=True`, `bos_token` and `eos_token` (the config's, else `<|bos|>` and
`<|eos|>`) and `raise_exception`; the rendered text is encoded as it is, the BOS and EOS tokens
written in it becoming their ids, with no BOS added; it adds no implicit stop sequence (EOS
ends the reply).

Otherwise, for base models (everything `parcae train` makes), the plain template is::

    <BOS>System: {system content}

    User: {user content}

    Assistant: {assistant content}

    User: {user content}

    Assistant:

that is, the BOS token, then each message as `Role: content` (the role capitalised: `System`,
`User`, `Assistant`, or any other role as given) with its content stripped, the messages
separated by a blank line (`\\n\\n`), and `\\n\\nAssistant:` at the end for the reply. A base
model that continues past its turn writes `\\n\\nUser:`, so the plain template adds
`\\n\\nUser:` as an implicit stop sequence (the reply's text is cut before it).

A message's content is a string, or a list of parts of which the `{"type": "text", "text"}`
ones are joined (the shape the OpenAI API allows); other parts are refused.

Chat tuning (`parcae.data.sft`) renders conversations with the model's template, or, for a
model without one, with `PLAIN_TEMPLATE`: the plain template written in Jinja, plus the EOS token
after each assistant turn, so that a tuned model learns to end its reply. The tuned model is
saved with that template (`ChatTemplate.save`), so `parcae chat` and `parcae serve` prompt it
exactly as it was trained and stop at its EOS.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from parcae.data.shards import atomic_write_json
from parcae.data.tokenizer import BOS, EOS
from parcae.errors import PromptError

CONFIG_FILE = "tokenizer_config.json"
PLAIN_STOP = "\n\nUser:"
PLAIN_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
    "{% if message.role in ['system', 'user', 'assistant'] %}{{ message.role | capitalize }}"
    "{% else %}{{ message.role }}{% endif %}: {{ message.content | trim }}"
    "{% if message.role == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %}{{ '\\n\\n' }}{% endif %}Assistant:{% endif %}"
)
logger = logging.getLogger("parcae.serve")


def message_text(content, index: int) -> str:
    """A message's text: a string, or the text parts of a list of parts (PromptError else)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise PromptError(f"messages[{index}].content: only text parts are supported")
            if not isinstance(part.get("text"), str):
                raise PromptError(f"messages[{index}].content: a text part needs a string 'text'")
            texts.append(part["text"])
        return "".join(texts)
    raise PromptError(f"messages[{index}].content must be a string or a list of text parts")


def render_plain(messages: list[dict]) -> str:
    """The plain template's text (without the BOS token, which is an id)."""
    turns = []
    for index, message in enumerate(messages):
        role = message["role"]
        name = role.capitalize() if role in ("system", "user", "assistant") else role
        turns.append(f"{name}: {message_text(message.get('content'), index).strip()}")
    return "\n\n".join(turns) + "\n\nAssistant:"


@dataclass
class ChatTemplate:
    """`template`: the tokenizer's Jinja template, or None for the plain one."""

    template: str | None = None
    bos_token: str = BOS
    eos_token: str = EOS

    @classmethod
    def find(cls, *directories: Path) -> ChatTemplate:
        """The template of the first `tokenizer_config.json` with a `chat_template` among
        `directories`; the plain template when there is none, or when jinja2 is missing (logged)."""
        for directory in directories:
            file = Path(directory) / CONFIG_FILE
            if not file.is_file():
                continue
            try:
                config = json.loads(file.read_text())
            except (OSError, ValueError) as error:
                logger.warning("%s is unreadable (%s): using the plain chat template", file, error)
                continue
            template = config.get("chat_template") if isinstance(config, dict) else None
            if isinstance(template, list):  # transformers' named templates: take "default"
                named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
                template = named.get("default")
            if not isinstance(template, str):
                continue
            try:
                import jinja2.sandbox  # noqa: F401
            except ImportError:
                logger.warning("%s has a chat template but jinja2 is not installed", file)
                return cls()
            specials = {
                key: value.get("content") if isinstance(value, dict) else value
                for key in ("bos_token", "eos_token")
                if isinstance(value := config.get(key), (str, dict))
            }
            return cls(template, **{k: v for k, v in specials.items() if isinstance(v, str)})
        return cls()

    @property
    def stop_sequences(self) -> list[str]:
        """Stop sequences the template implies (the plain template's next user turn)."""
        return [] if self.template is not None else [PLAIN_STOP]

    def prompt_ids(self, messages: list[dict], tokenizer) -> list[int]:
        """The prompt's token ids for `messages` (each a dict with a string `role` and a
        `content`); PromptError for content the template cannot take."""
        if self.template is None:
            text = render_plain(messages)
            return [tokenizer.bos_id, *tokenizer.encode(text)]
        return self.encode(self.render(messages), tokenizer)

    def encode(self, text: str, tokenizer) -> list[int]:
        """`text`'s ids, the BOS and EOS tokens written in it as their ids (our tokenizer
        encodes special tokens in text as plain text, so they are split out here)."""
        specials = {BOS: tokenizer.bos_id, EOS: tokenizer.eos_id}
        specials |= {self.bos_token: tokenizer.bos_id, self.eos_token: tokenizer.eos_id}
        specials.pop("", None)
        pattern = (
            "(" + "|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)) + ")"
        )
        ids: list[int] = []
        for index, piece in enumerate(re.split(pattern, text)):
            if index % 2:
                ids.append(specials[piece])
            elif piece:
                ids += tokenizer.encode(piece)
        return ids

    def save(self, directory: Path) -> None:
        """Write the template (and its BOS and EOS tokens) into `directory`'s
        `tokenizer_config.json`, keeping the file's other keys (atomic)."""
        file = Path(directory) / CONFIG_FILE
        config = json.loads(file.read_text()) if file.is_file() else {}
        config |= {
            "chat_template": self.template or PLAIN_TEMPLATE,
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
        }
        atomic_write_json(file, config)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The template's text for `messages` (`PLAIN_TEMPLATE` when there is none), ending
        with the assistant's turn opening when `add_generation_prompt`."""
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message):
            raise PromptError(f"the chat template refused the messages: {message}")

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        environment.globals["raise_exception"] = raise_exception
        plain = [
            {**message, "content": message_text(message.get("content"), index)}
            for index, message in enumerate(messages)
        ]
        try:
            return environment.from_string(self.template or PLAIN_TEMPLATE).render(
                messages=plain,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as error:
            raise PromptError(f"the chat template failed: {error}") from None
