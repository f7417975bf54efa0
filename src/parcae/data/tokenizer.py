"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), saved and loaded as `tokenizer.json`.

The format is the official Parcae one: byte-level BPE, GPT-4 pre-split pattern, no normaliser,
special tokens `<|bos|>`=0, `<|eos|>`=1, `<|pad|>`=2. Special-token strings inside text are
encoded as ordinary text, so a document can never inject a document boundary.

A tokenizer directory holds `tokenizer.json` and, as transformers writes it, optionally
`tokenizer_config.json` (and the older `special_tokens_map.json`). BOS, EOS and padding are the
`bos_token`, `eos_token`, `pad_token` named there, else `<|bos|>`, `<|eos|>`, `<|pad|>`; without
a padding token, EOS pads. The chat template is `tokenizer_config.json`'s `chat_template`
(Jinja, as transformers reads it), None when absent.

Bits per byte (ARCHITECTURE §5): `bpb = Σ nats / (ln 2 · Σ bytes)`, where the bytes of a target
token are `token_byte_lengths()[token]`: 0 for special tokens, 1 for a byte-fallback token
`<0xHH>`, else the bytes its byte-level characters stand for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from parcae.errors import ConfigError, DataError
from parcae.outputs import write_json_atomic, write_text_atomic

# GPT-4 (cl100k) pre-split: contractions, words with one leading non-letter, up to 3 digits,
# punctuation runs, newlines, whitespace.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
FILE_NAME = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"  # transformers': special-token names, chat template
SPECIAL_TOKENS_FILE = "special_tokens_map.json"  # transformers' older file for the names
BYTE_FALLBACK = re.compile(r"<0x[0-9A-F]{2}>")
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + 256
# above every vocabulary in use (Gemma's 262k); the BPE trainer reserves memory by vocab size
MAX_VOCAB_SIZE = 1 << 20


def _byte_decoder() -> dict[str, int]:
    """Inverse of the GPT-2 byte-to-unicode map of byte-level BPE: printable bytes map to
    themselves, the other 68 bytes to chr(256), chr(257), ... in byte order (one char per byte)."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), 256),
    }
    shifted = [byte for byte in range(256) if byte not in printable]
    return {chr(byte): byte for byte in printable} | {
        chr(256 + i): byte for i, byte in enumerate(shifted)
    }


def check_vocab_size(vocab_size: int) -> None:
    """Refuse a vocabulary size a byte-level BPE tokenizer cannot have or could not train."""
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ConfigError(
            f"vocab size must be between {MIN_VOCAB_SIZE} (3 specials + 256 bytes) and "
            f"{MAX_VOCAB_SIZE:,}, got {vocab_size:,}"
        )


def _token_name(value: object) -> str | None:
    """A special token as transformers' configs write it: a string or {"content": string}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """A byte-level BPE tokenizer; `.backend` is the underlying `tokenizers.Tokenizer`.

    config: the `tokenizer_config.json` (or `special_tokens_map.json`) entries that name the
    special tokens (`bos_token`, `eos_token`, `pad_token`) and the `chat_template`; missing
    names default to `<|bos|>`, `<|eos|>`, `<|pad|>` (EOS pads when no padding token exists).
    """

    def __init__(self, backend: HFTokenizer, config: dict | None = None):
        config = config or {}
        names = {
            role: _token_name(config.get(f"{role}_token")) or default
            for role, default in (("bos", BOS), ("eos", EOS), ("pad", PAD))
        }
        ids = {role: backend.token_to_id(name) for role, name in names.items()}
        if ids["pad"] is None and "pad_token" not in config:
            ids["pad"] = ids["eos"]
        missing = [names[role] for role, index in ids.items() if index is None]
        if missing:
            raise DataError(f"tokenizer lacks the special token(s) {', '.join(missing)}")
        template = config.get("chat_template")
        if isinstance(template, list):  # transformers' named templates: take the default one
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        if template is not None and not isinstance(template, str):
            raise DataError(f"chat_template must be a Jinja string, got {type(template).__name__}")
        backend.encode_special_tokens = True
        self.backend = backend
        self.special_names = names
        self.bos_id, self.eos_id, self.pad_id = ids["bos"], ids["eos"], ids["pad"]
        self.chat_template: str | None = template

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, show_progress: bool = False) -> Tokenizer:
        """Learn BPE merges from `texts` until the vocabulary (specials included) has
        `vocab_size` entries."""
        check_vocab_size(vocab_size)
        backend = HFTokenizer(models.BPE(unk_token=None, byte_fallback=False))
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=0,
            show_progress=show_progress,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=list(SPECIAL_TOKENS),
        )
        counted = _CountingIterator(texts)
        backend.train_from_iterator(counted, trainer=trainer)
        if counted.chars == 0:
            raise DataError("cannot train a tokenizer on empty input")
        return cls(backend)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Load `tokenizer.json`, given the file itself or the directory holding it, with the
        `tokenizer_config.json` / `special_tokens_map.json` beside it, if any."""
        path = Path(path)
        file = path / FILE_NAME if path.is_dir() else path
        if not file.is_file():
            raise DataError(
                f"no tokenizer at {path} (expected a {FILE_NAME} file or a directory holding one)"
            )
        try:
            backend = HFTokenizer.from_file(str(file))
        except Exception as error:  # tokenizers raises a bare Exception on malformed files
            raise DataError(
                f"{file}: not a valid tokenizer.json ({str(error).splitlines()[0]})"
            ) from error
        config = {}
        for name in (SPECIAL_TOKENS_FILE, CONFIG_FILE):  # the second one wins
            config |= _read_json_object(file.parent / name)
        return cls(backend, config)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/tokenizer.json` atomically, and `tokenizer_config.json` when the
        special-token names are not the defaults or there is a chat template; returns the
        tokenizer.json path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        file = directory / FILE_NAME
        write_text_atomic(file, self.backend.to_str())
        defaults = {"bos": BOS, "eos": EOS, "pad": PAD}
        if self.chat_template is not None or self.special_names != defaults:
            config = {f"{role}_token": name for role, name in self.special_names.items()}
            config["tokenizer_class"] = "PreTrainedTokenizerFast"
            if self.chat_template is not None:
                config["chat_template"] = self.chat_template
            write_json_atomic(directory / CONFIG_FILE, config, indent=2)
        return file

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def hash(self) -> str:
        """Stable content hash: sha256 of the canonical JSON of the tokenizer, 16 hex digits."""
        canonical = json.dumps(
            json.loads(self.backend.to_str()), sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS added)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt: BOS, then `text`'s ids. The one BOS rule of generation
        (the released models were trained on BOS-separated documents): `parcae generate`,
        chat, the server and the transformers tokenizer of `parcae.hf` all start with BOS."""
        return [self.bos_id, *self.encode(text)]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded in parallel on all CPU cores (no BOS added)."""
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens appear as their names."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_byte_lengths(self) -> np.ndarray:
        """(vocab_size,) int64: UTF-8 bytes each token stands for, 0 for special tokens (the
        added tokens marked special, and BOS, EOS, padding), 1 for `<0xHH>` when the model
        falls back to bytes."""
        byte_of = _byte_decoder()
        special = {
            token.content
            for token in self.backend.get_added_tokens_decoder().values()
            if token.special
        }
        specials = {self.bos_id, self.eos_id, self.pad_id}
        byte_fallback = json.loads(self.backend.to_str())["model"].get("byte_fallback", False)
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, index in self.backend.get_vocab(with_added_tokens=True).items():
            if token in special or index in specials:
                continue
            if byte_fallback and BYTE_FALLBACK.fullmatch(token):
                lengths[index] = 1
            elif not all(char in byte_of for char in token):
                raise DataError(
                    f"token {token!r} is not byte-level: not a byte-level BPE tokenizer"
                )
            else:
                lengths[index] = len(token)
        return lengths

    def bytes_per_token(self, texts: Iterable[str]) -> float:
        """Compression on `texts`: UTF-8 bytes divided by tokens."""
        texts = list(texts)
        n_bytes = sum(len(text.encode()) for text in texts)
        n_tokens = sum(len(ids) for ids in self.encode_batch(texts))
        if n_tokens == 0:
            raise DataError("cannot measure compression on empty text")
        return n_bytes / n_tokens


def _read_json_object(file: Path) -> dict:
    """The JSON object in `file`, {} when there is no such file."""
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{file}: unreadable ({error})") from None
    if not isinstance(data, dict):
        raise DataError(f"{file}: expected a JSON object")
    return data


class _CountingIterator:
    """Passes texts through while counting their characters (to detect empty input)."""

    def __init__(self, texts: Iterable[str]):
        self._texts = iter(texts)
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            self.chars += len(text)
            yield text
