"""Records of a source file: JSON array, JSON lines, either gzipped, Parquet, or a dataset
version of this project. Yields ``(where, record)`` with ``where`` = ``file:line`` (JSON, the
line the record starts on) or ``file:row N`` (Parquet, versions), 1-based."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import IO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from humanline_data import store
from humanline_data.errors import InputFormatError

_SPACE = re.compile(r"\s*")


def source_name(path: Path) -> str:
    """A file's name without its suffixes (``x.jsonl.gz`` -> ``x``); a version's dataset name."""
    path = Path(path)
    if path.is_dir():
        return store.resolve_version(path).parent.name
    return path.name.split(".")[0]


def fingerprint(path: Path) -> dict:
    """``{path, sha256}`` of a source; for a version, its directory and its manifest's sha256."""
    if path.is_dir():
        version = store.resolve_version(path)
        return {"path": str(version.resolve()), "sha256": store.sha256_file(version / store.MANIFEST)}
    return {"path": str(path.resolve()), "sha256": store.sha256_file(path)}


def read_records(path: Path) -> Iterator[tuple[str, dict]]:
    path = Path(path)
    if path.is_dir():
        yield from _rows(path, store.iter_batches(store.open_version(path)))
    elif path.name.endswith(".parquet"):
        try:
            batches = pq.ParquetFile(path).iter_batches()
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputFormatError(f"{path}: not a readable Parquet file ({exc})") from None
        yield from _rows(path, batches)
    else:
        yield from _json_records(path)


def _rows(path: Path, batches) -> Iterator[tuple[str, dict]]:
    n = 0
    for batch in batches:
        for record in batch.to_pylist():
            n += 1
            yield f"{path}:row {n}", record


def _open(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _json_records(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        with _open(path) as f:
            head = f.read(4096).lstrip()
            if head.startswith("["):
                f.seek(0)
                yield from _array(path, f.read())
            else:
                f.seek(0)
                yield from _lines(path, f)
    except UnicodeDecodeError:
        raise InputFormatError(f"{path}: not UTF-8 text") from None
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise InputFormatError(f"{path}: not a readable gzip file ({exc})") from None


def _record(path: Path, line: int, value) -> tuple[str, dict]:
    where = f"{path}:{line}"
    if not isinstance(value, dict):
        raise InputFormatError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return where, value


def _lines(path: Path, f: IO[str]) -> Iterator[tuple[str, dict]]:
    for line_no, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputFormatError(f"{path}:{line_no}: malformed JSON ({exc.msg}, column {exc.colno})") from None
        yield _record(path, line_no, value)


def _array(path: Path, text: str) -> Iterator[tuple[str, dict]]:
    """Elements of a JSON array, decoded one by one so each knows the line it starts on."""
    decoder = json.JSONDecoder()
    i = _SPACE.match(text).end() + 1  # past "["
    line, counted_to = 1, 0
    try:
        while True:
            i = _SPACE.match(text, i).end()
            if text.startswith("]", i):
                break
            value, end = decoder.raw_decode(text, i)
            line += text.count("\n", counted_to, i)
            counted_to = i
            yield _record(path, line, value)
            i = _SPACE.match(text, end).end()
            if text.startswith(",", i):
                i += 1
            elif not text.startswith("]", i):
                raise json.JSONDecodeError("Expecting ',' or ']'", text, i)
    except json.JSONDecodeError as exc:
        raise InputFormatError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None
    if text[i + 1 :].strip():
        raise InputFormatError(f"{path}: extra data after the JSON array")
