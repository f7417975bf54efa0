"""Model references: what `--model REF` and `from_pretrained(REF)` name, turned into a local
directory holding the model's `config.json`.

A reference is, in this order:
1. an existing local path (always wins): a model directory (ours, transformers' or an official
   checkpoint: anything with a `config.json`) or a training run directory (its final model in
   `REF/model/`);
2. a Hugging Face Hub repo, `org/name` or `org/name@revision` (a branch, tag or commit),
   downloaded with `huggingface_hub.snapshot_download` into its cache (`HF_HOME`, `HF_HUB_CACHE`
   or `cache_dir`): the config, the weights and the tokenizer files (`HUB_FILES`), nothing else.
   With `HF_HUB_OFFLINE=1`, or when the Hub cannot be reached, the cached snapshot is used.

Every failure is one `CheckpointError` line: no such path, unknown repo, unknown revision, a
repo without weights, a download cut short or corrupted (a file whose bytes do not match the
sha256 the Hub announced is removed from the cache, so the next try downloads it again), no
network and no cached copy.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from parcae.errors import CheckpointError, ConfigError
from parcae.model.serialization import WEIGHT_FILES

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
HUB_FILES = ("config.json", *WEIGHT_FILES, *TOKENIZER_FILES)
# owner/name as the Hub spells them: letters, digits, '-', '_', '.'; no leading '.' or '-'
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
SHA256 = re.compile(r"[0-9a-f]{64}")


def split_revision(ref: str) -> tuple[str, str | None]:
    """`org/name@revision` -> ("org/name", "revision"); no `@` -> (ref, None)."""
    name, at, revision = ref.partition("@")
    if at and not revision:
        raise ConfigError(f"{ref!r}: nothing after '@' (expected org/name@revision)")
    return name, revision if at else None


def is_hub_name(ref: str) -> bool:
    """Whether `ref` reads as a Hub repo (`org/name`, optionally `@revision`)."""
    return REPO_ID.fullmatch(ref.partition("@")[0]) is not None


def local_model_dir(path: Path) -> Path:
    """The directory holding the model's `config.json` for an existing model or run directory."""
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a model or run directory, got a file")
    if (path / "config.json").is_file():
        return path
    if (path / "model" / "config.json").is_file():
        return path / "model"
    raise CheckpointError(
        f"{path}: neither a model directory (no config.json) nor a run "
        f"directory (no model/config.json)"
    )


def resolve_model_dir(
    ref: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    weights: bool = True,
) -> Path:
    """The local directory holding the model's `config.json` for a model reference (see the
    module docstring): a local model or run directory, else a Hub repo, downloaded or taken
    from the cache. `revision` (or `@revision` in `ref`) picks a branch, tag or commit; `token`
    reads a private repo; `weights=False` fetches the config and tokenizer only."""
    path = Path(ref)
    if path.exists():
        return local_model_dir(path)
    text = os.fspath(ref)
    if not is_hub_name(text):
        raise CheckpointError(f"{text}: no such model or run directory")
    name, named_revision = split_revision(text)
    if revision is not None and named_revision is not None and revision != named_revision:
        raise ConfigError(f"{text}: revision {named_revision!r} conflicts with {revision!r}")
    return download(name, revision or named_revision, cache_dir, token, weights)


def download(
    repo: str,
    revision: str | None,
    cache_dir: str | os.PathLike | None,
    token: str | bool | None,
    weights: bool = True,
) -> Path:
    """Snapshot of Hub repo `repo` (the files of `HUB_FILES`) in the cache; see
    `resolve_model_dir`."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    label = repo if revision is None else f"{repo}@{revision}"
    patterns = list(HUB_FILES if weights else ("config.json", *TOKENIZER_FILES))
    blobs = _blob_dir(repo, cache_dir)
    before = set(os.listdir(blobs)) if blobs.is_dir() else set()
    try:
        folder = Path(
            snapshot_download(
                repo,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                allow_patterns=patterns,
            )
        )
    except GatedRepoError:
        raise CheckpointError(
            f"{label}: the Hub repo is gated; accept its terms on the Hub, then pass a token "
            f"(token= or `hf auth login`)"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(
            f"{label}: the Hub repo {repo} has no revision {revision!r}"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{label}: no such local directory, nor a model repo on the Hub (a private repo "
            f"needs a token: token= or `hf auth login`)"
        ) from None
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{label}: the Hub cannot be reached (offline) and the model is not in the local "
            f"cache; download it where there is network (`hf download {repo}`), copy the "
            f"folder here and pass --model DIR"
        ) from None
    except Exception as error:  # noqa: BLE001 - HTTP errors, connection lost, a size mismatch
        # (cut short): their types depend on huggingface_hub's HTTP client and version
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{label}: download failed ({first}); nothing partial was kept, try again"
        ) from None
    _check_new_blobs(blobs, before, label)
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{label}: the Hub repo has no config.json (not a model repo)")
    if weights and not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(
            f"{label}: the Hub repo has no weights file (expected one of {', '.join(WEIGHT_FILES)})"
        )
    return folder


def _blob_dir(repo: str, cache_dir: str | os.PathLike | None) -> Path:
    """Where huggingface_hub keeps the file contents of `repo` (named by git or LFS hash)."""
    from huggingface_hub import constants

    root = Path(cache_dir) if cache_dir is not None else Path(constants.HF_HUB_CACHE)
    return root / f"models--{repo.replace('/', '--')}" / "blobs"


def _check_new_blobs(blobs: Path, before: set[str], label: str) -> None:
    """Hash each file downloaded just now whose name is the sha256 the Hub announced (LFS
    files: the weights); remove a mismatching one and say so."""
    if not blobs.is_dir():
        return
    for name in sorted(set(os.listdir(blobs)) - before):
        if not SHA256.fullmatch(name):
            continue
        digest = hashlib.sha256()
        with open(blobs / name, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
        if digest.hexdigest() != name:
            (blobs / name).unlink()
            raise CheckpointError(
                f"{label}: a downloaded file is corrupted (its sha256 does not match the Hub's); "
                f"it was removed from the cache, try again"
            )
