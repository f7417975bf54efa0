"""Corpus sources: turn an `--input` spec into a stream of documents (strings).

Specs:
- `shakespeare` (a recipe: see `parcae.data.recipes`), read as a directory of `.txt` files;
- `hf:NAME[:CONFIG]`: a Hugging Face dataset, `train` split, streamed with `datasets` (the
  optional extra `parcae[hf]`);
- a path: a `.txt` file (one document), a `.jsonl` file (one document per line, in a string
  field), a `.parquet` file (one document per row of a string column, streamed by row group), or
  a directory: every such file under it, recursively, in sorted path order.

Policy for bad text: input is refused, never silently repaired. A file holding a NUL byte is
treated as binary and refused; bytes that are not valid UTF-8 are refused with their offset (or
line). Empty documents are skipped; an input without any non-empty document is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from parcae.data import recipes
from parcae.errors import DataError, MissingDependencyError
from parcae.values import parse_json

HF_PREFIX = "hf:"


def _decode(data: bytes, where: str) -> str:
    """UTF-8 text of `data`, refusing binary data (NUL bytes) and invalid UTF-8."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise DataError(
            f"{where}: binary data (NUL byte at offset {nul}); only UTF-8 text is accepted"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(
            f"{where}: not UTF-8 (byte 0x{data[error.start]:02x} at offset "
            f"{error.start}); convert it to UTF-8"
        ) from None


def _read_txt(path: Path, text_field: str) -> Iterator[str]:
    yield _decode(path.read_bytes(), str(path))


def iter_jsonl(path: Path) -> Iterator[tuple[str, object]]:
    """("file:line", decoded JSON value) of each non-blank line of a jsonl file; refuses
    non-UTF-8 bytes and lines that are not JSON, naming the line."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            line = _decode(raw, where)
            if not line.strip():
                continue
            try:
                yield where, parse_json(line)
            except ValueError as error:
                raise DataError(f"{where}: not valid JSON ({error})") from None


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    for where, record in iter_jsonl(path):
        if not isinstance(record, dict) or text_field not in record:
            raise DataError(f"{where}: no field {text_field!r} (choose another with --text-field)")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {text_field!r} is {type(text).__name__}, not a string")
        yield text


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable parquet file ({error})") from None
    schema = parquet.schema_arrow
    if text_field not in schema.names:
        raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(schema.names)})")
    column_type = schema.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise DataError(f"{path}: column {text_field!r} has type {column_type}, not string")
    for group in range(parquet.num_row_groups):
        column = parquet.read_row_group(group, columns=[text_field]).column(0)
        yield from (text for text in column.to_pylist() if text is not None)


READERS: dict[str, Callable[[Path, str], Iterator[str]]] = {
    ".txt": _read_txt,
    ".jsonl": _read_jsonl,
    ".parquet": _read_parquet,
}


def _files(path: Path) -> list[Path]:
    """The readable files of a path: itself, or every file with a known suffix under a
    directory."""
    if not path.exists():
        raise DataError(f"no such file or directory: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in READERS)
        if not files:
            raise DataError(f"{path}: no {', '.join(READERS)} files in this directory")
        return files
    if path.suffix not in READERS:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r} "
            f"(use {', '.join(READERS)} or a directory)"
        )
    return [path]


def _iter_local(path: Path, text_field: str) -> Iterator[str]:
    for file in _files(path):
        yield from READERS[file.suffix](file, text_field)


def _iter_hf(name: str, text_field: str) -> Iterator[str]:
    """Stream the `train` split of a Hugging Face dataset `NAME[:CONFIG]` (or a local dataset
    path)."""
    try:
        import datasets  # heavy and optional: only for hf: inputs
    except ModuleNotFoundError:
        raise MissingDependencyError("datasets", f"the input {HF_PREFIX}{name}") from None

    dataset_name, _, config = name.partition(":")
    try:
        stream = datasets.load_dataset(dataset_name, config or None, split="train", streaming=True)
        for record in stream:
            if text_field not in record:
                raise DataError(
                    f"{HF_PREFIX}{name}: no field {text_field!r} (fields: {', '.join(record)})"
                )
            yield record[text_field]
    except DataError:
        raise
    except Exception as error:  # the hub and datasets raise many unrelated types
        first_line = str(error).splitlines()[0]
        raise DataError(f"{HF_PREFIX}{name}: cannot stream dataset ({first_line})") from None


def iter_documents(input_spec: str, text_field: str = "text") -> Iterator[str]:
    """Yield the non-empty documents of `input_spec`; raises DataError if there are none."""
    if input_spec.startswith(HF_PREFIX):
        documents = _iter_hf(input_spec[len(HF_PREFIX) :], text_field)
    elif input_spec in recipes.RECIPES:
        documents = _iter_local(recipes.RECIPES[input_spec](), text_field)
    else:
        documents = _iter_local(Path(input_spec).expanduser(), text_field)
    count = 0
    for document in documents:
        if document:
            count += 1
            yield document
    if count == 0:
        raise DataError(f"{input_spec}: empty input (no non-empty documents)")
