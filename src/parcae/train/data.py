"""The training data of a run: a prepared directory, made on first use when `data` is a corpus.

`data` is either a prepared directory (holding `manifest.json` and `tokenizer.json`) used as is,
or a corpus spec (`shakespeare`, a file or directory, `hf:NAME`): then a tokenizer of
`vocab_size` tokens is trained on its train split and the corpus is tokenised into `data_dir`
(default `$PARCAE_CACHE/prepared/<name>-v<vocab_size>`), once; later runs reuse it. A synthetic
task (`synth:<task>...`, `parcae.data.synth`) is generated on the fly: its directory holds only
the character-level tokenizer (default `$PARCAE_CACHE/prepared/synth`), and `vocab_size` is
not used.

Fine-tuning (`init_from`), the data must be tokenised with the model's tokenizer: a corpus is
prepared with it (into a directory named after the tokenizer's hash, no tokenizer trained), and a
prepared directory made with another tokenizer is refused. `sft:FILE.jsonl` (chat tuning) reads
conversations into packed rows in memory (`parcae.data.sft`) with the model's chat template,
which the exported model then carries.

`TrainData` reads it: each of the W processes takes its B/W rows of every global batch of B
(`batch_size`) rows of `seq_len` tokens, and runs them in micro-batches of `micro_batch_size`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from parcae.data import synth
from parcae.data.chat_template import ChatTemplate
from parcae.data.loader import Batch, TokenLoader, iter_eval_batches
from parcae.data.prepare import prepare_dataset
from parcae.data.runs import prepared_dir
from parcae.data.sft import (
    PREFIX as SFT_PREFIX,
)
from parcae.data.sft import (
    ConversationLoader,
    Conversations,
    iter_conversation_batches,
    read_conversations,
)
from parcae.data.shards import MANIFEST, load_manifest
from parcae.data.tokenizer import FILE_NAME, Tokenizer
from parcae.data.train_tokenizer import train_tokenizer
from parcae.errors import ConfigError
from parcae.train import distributed as dist
from parcae.train.config import TrainConfig
from parcae.train.pretrained import Pretrained


def resolve_data_dir(
    config: TrainConfig, prepare: bool, progress: bool = True, tokenizer: Tokenizer | None = None
) -> Path:
    """The prepared directory for `config.data`, preparing it when `prepare` (the main process)
    and it is missing. Other processes call this with `prepare=False` after a barrier. With
    `tokenizer` (fine-tuning), the data is (or must have been) tokenised with it."""
    spec, vocab_size, val_fraction = config.data, config.vocab_size, config.val_fraction
    name = vocab_size if tokenizer is None else f"t{tokenizer.hash[:12]}"
    directory = prepared_dir(spec, config.data_dir, name)
    if directory == Path(spec) and (directory / MANIFEST).is_file():
        if tokenizer is not None:
            load_manifest(spec, tokenizer_hash=tokenizer.hash)
        return directory
    if synth.is_synth(spec):
        if tokenizer is not None and tokenizer.hash != synth.tokenizer().hash:
            raise ConfigError(
                f"data={spec}: a synthetic task has its own character vocabulary; it cannot "
                "fine-tune a model (init_from) with another tokenizer"
            )
        synth.parse_spec(spec)  # refuse a bad spec before writing anything
        if prepare and not (directory / FILE_NAME).is_file():
            synth.tokenizer().save(directory)
        return directory
    if tokenizer is not None and (directory / MANIFEST).is_file():
        load_manifest(directory, tokenizer_hash=tokenizer.hash)
    if prepare and not (directory / MANIFEST).is_file():
        if tokenizer is not None and not (directory / FILE_NAME).is_file():
            directory.mkdir(parents=True, exist_ok=True)
            tokenizer.save(directory)
        if not (directory / FILE_NAME).is_file():
            report = train_tokenizer(spec, vocab_size, directory, val_fraction, progress=progress)
            if progress:
                print(
                    f"parcae: trained a {report.tokenizer.vocab_size}-token tokenizer in "
                    f"{report.seconds:.1f} s -> {report.path}"
                )
        prepare_dataset(spec, directory, directory, val_fraction, progress=progress)
    return directory


def data_vocab_size(config: TrainConfig, prepare: bool = True) -> int:
    """The number of tokens of `config`'s data tokenizer (the model's vocabulary before
    padding), preparing the data first when `prepare` and it is missing."""
    return Tokenizer.load(resolve_data_dir(config, prepare=prepare, progress=False)).vocab_size


def batch_split(config: TrainConfig, world_size: int) -> tuple[int, int]:
    """(rows per process per step B/W, rows per micro-batch)."""
    if config.batch_size % world_size:
        raise ConfigError(
            f"batch_size {config.batch_size} is not divisible by the {world_size} processes"
        )
    per_rank = config.batch_size // world_size
    micro = min(config.micro_batch_size or per_rank, per_rank)
    if per_rank % micro:
        raise ConfigError(
            f"micro_batch_size {micro} does not divide the {per_rank} rows "
            "each process takes per step"
        )
    return per_rank, micro


class TrainData:
    """This process's training batches (resumable), the validation batches and the tokenizer.

    Config keys: data, data_dir, vocab_size, val_fraction (preparation), batch_size,
    micro_batch_size, seq_len, seed (training order), eval_batch_size.
    """

    def __init__(
        self,
        config: TrainConfig,
        directory: Path,
        info: dist.DistInfo,
        pretrained: Pretrained | None = None,
    ) -> None:
        self.directory, self.pretrained = directory, pretrained
        self.tokenizer = Tokenizer.load(directory) if pretrained is None else pretrained.tokenizer
        self.token_bytes = torch.from_numpy(self.tokenizer.token_byte_lengths())  # (V,) int64
        self.rows, self.micro = batch_split(config, info.world_size)
        self.first_row = info.rank * self.rows  # this process's first row in a global batch
        self.eval_batch_size, self.seq_len = config.eval_batch_size, config.seq_len
        # the chat template the exported model carries: chat tuning's, else the model's own
        self.chat_template: ChatTemplate | None = None
        self.conversations: dict[str, Conversations] | None = None
        order = dict(seed=config.seed, rank=info.rank, world_size=info.world_size)
        self.synth = config.data if synth.is_synth(config.data) else None
        if self.synth:
            self.loader = synth.SynthLoader(
                self.synth, batch_size=self.rows, seq_len=config.seq_len, **order
            )
        elif config.data.startswith(SFT_PREFIX):
            self.chat_template = pretrained.chat_template
            self.conversations = read_conversations(
                directory, self.chat_template, self.tokenizer, config.seq_len, config.val_fraction
            )
            self.loader = ConversationLoader(
                self.conversations["train"], self.rows, tokenizer_hash=self.tokenizer.hash, **order
            )
        else:
            if pretrained is not None and pretrained.chat_template.template is not None:
                self.chat_template = pretrained.chat_template
            self.loader = TokenLoader(
                directory, "train", batch_size=self.rows, seq_len=config.seq_len, **order
            )

    @classmethod
    def build(cls, config: TrainConfig, info: dist.DistInfo, progress: bool) -> TrainData:
        """Prepare the data on the main process (the others wait), then open it everywhere."""
        pretrained = Pretrained.find(config.init_from) if config.init_from else None
        if config.data.startswith(SFT_PREFIX):
            return cls(config, Path(config.data.removeprefix(SFT_PREFIX)), info, pretrained)
        tokenizer = None if pretrained is None else pretrained.tokenizer
        resolve_data_dir(config, prepare=info.is_main, progress=progress, tokenizer=tokenizer)
        dist.barrier(info)
        directory = resolve_data_dir(config, prepare=False, tokenizer=tokenizer)
        return cls(config, directory, info, pretrained)

    def next_batch(self) -> Batch:
        """This process's rows of the next global batch, (B/W, seq_len) each."""
        return self.loader.next_batch()

    def eval_batches(self, max_batches: int | None) -> Iterator[Batch]:
        """The validation split in order, `eval_batch_size` rows a batch (all when None)."""
        if self.synth:
            return synth.iter_val_batches(
                self.synth, self.eval_batch_size, self.seq_len, max_batches
            )
        if self.conversations is not None:
            return iter_conversation_batches(
                self.conversations["val"], self.eval_batch_size, max_batches
            )
        return iter_eval_batches(
            self.directory, "val", self.eval_batch_size, self.seq_len, max_batches
        )

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)
