"""Byte-level BPE tokenizer (Hugging Face `tokenizers`), saved and loaded as `tokenizer.json`.

The format is the official Parcae one: byte-level BPE, GPT-4 pre-split pattern, no normaliser,
special tokens `<|bos|>`=0, `<|eos|>`=1, `<|pad|>`=2. Any `tokenizer.json` with those three
special tokens loads. Special-token strings inside text are encoded as ordinary text, so a
document can never inject a document boundary.

Bits per byte (ARCHITECTURE §5): `bpb = Σ nats / (ln 2 · Σ bytes)`, where the bytes of a target
token are `token_byte_lengths()[token]` (0 for special tokens).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from parcae.errors import ConfigError, DataError
from parcae.outputs import write_text_atomic

# GPT-4 (cl100k) pre-split: contractions, words with one leading non-letter, up to 3 digits,
# punctuation runs, newlines, whitespace.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
FILE_NAME = "tokenizer.json"
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


class Tokenizer:
    """A byte-level BPE tokenizer; `.backend` is the underlying `tokenizers.Tokenizer`."""

    def __init__(self, backend: HFTokenizer):
        ids = {name: backend.token_to_id(name) for name in SPECIAL_TOKENS}
        missing = [name for name, index in ids.items() if index is None]
        if missing:
            raise DataError(f"tokenizer lacks the special token(s) {', '.join(missing)}")
        backend.encode_special_tokens = True
        self.backend = backend
        self.bos_id, self.eos_id, self.pad_id = ids[BOS], ids[EOS], ids[PAD]

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
        """Load `tokenizer.json`, given the file itself or the directory holding it."""
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
        return cls(backend)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `directory/tokenizer.json` atomically; returns the file path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        file = directory / FILE_NAME
        return write_text_atomic(file, self.backend.to_str())

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

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded in parallel on all CPU cores (no BOS added)."""
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens appear as their names."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_byte_lengths(self) -> np.ndarray:
        """(vocab_size,) int64: UTF-8 bytes each token stands for, 0 for special tokens."""
        byte_of = _byte_decoder()
        special = {
            token.content
            for token in self.backend.get_added_tokens_decoder().values()
            if token.special
        }
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for token, index in self.backend.get_vocab(with_added_tokens=True).items():
            if token in special:
                continue
            if not all(char in byte_of for char in token):
                raise DataError(
                    f"token {token!r} is not byte-level: not a byte-level BPE tokenizer"
                )
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


class _CountingIterator:
    """Passes texts through while counting their characters (to detect empty input)."""

    def __init__(self, texts: Iterable[str]):
        self._texts = iter(texts)
        self.chars = 0

    def __iter__(self) -> Iterator[str]:
        for text in self._texts:
            self.chars += len(text)
            yield text
