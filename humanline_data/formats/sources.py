"""Records of a source file: JSON array, JSON lines, either gzipped, Parquet, an Arrow IPC
stream (``.arrow``, as ``datasets`` writes), or a dataset version of this project. Yields
``(where, record)`` with ``where`` = ``file:line`` (JSON, the line the record starts on) or
``file:row N`` (Parquet, Arrow, versions), 1-based."""

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
from humanline_data.formats.fields import RecordError, WrittenFloat

PARQUET_SUFFIX = ".parquet"  # a source file so named is read as Parquet
_SPACE = re.compile(r"\s*")
_BOM = b"\xef\xbb\xbf"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # JSON escapes of UTF-16 surrogates


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


def read_records(path: Path) -> Iterator[tuple[str, dict | RecordError]]:
    """``(where, record)`` for each record of ``path``; a record that cannot be read as valid
    text (a lone UTF-16 surrogate escape) comes as the :class:`RecordError` that skips it."""
    path = Path(path)
    if path.is_dir():
        yield from version_records(store.open_version(path))
    elif path.name.endswith(PARQUET_SUFFIX):
        try:
            batches = pq.ParquetFile(path).iter_batches()
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise InputFormatError(f"{path}: not a readable Parquet file ({_first_line(exc)})") from None
        yield from _rows(path, batches)
    elif path.name.endswith(".arrow"):  # as `datasets` writes its shards
        try:
            batches = pa.ipc.open_stream(pa.OSFile(str(path)))
        except (pa.ArrowException, OSError) as exc:
            raise InputFormatError(f"{path}: not a readable Arrow IPC stream ({_first_line(exc)})") from None
        yield from _rows(path, batches)
    else:
        yield from _json_records(path)


def version_records(version: store.Version) -> Iterator[tuple[str, dict]]:
    """``(where, row)`` for each row of an opened version (``where`` = ``<version>:row N``)."""
    yield from _rows(version.path, store.iter_batches(version))


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _rows(path: Path, batches) -> Iterator[tuple[str, dict]]:
    n = 0
    try:
        for batch in batches:
            for record in batch.to_pylist():
                n += 1
                yield f"{path}:row {n}", record
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise InputFormatError(f"{path}: unreadable after row {n} ({_first_line(exc)})") from None


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _json_records(path: Path) -> Iterator[tuple[str, dict | RecordError]]:
    try:
        with _open(path) as f:
            head = f.read(4096).removeprefix(_BOM).lstrip()
            f.seek(0)
            if head.startswith(b"["):
                yield from _array(path, f.read())
            else:
                yield from _lines(path, f)
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise InputFormatError(f"{path}: not a readable gzip file ({exc})") from None
    except OSError as exc:
        raise InputFormatError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _decode(path: Path, data: bytes, line: int) -> str:
    """UTF-8 text of ``data`` (which starts on ``line``); a UTF-8 BOM at the file's start is dropped."""
    if line == 1:
        data = data.removeprefix(_BOM)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = line + data.count(b"\n", 0, exc.start)
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputFormatError(
            f"{path}:{at}: not UTF-8 text (byte 0x{data[exc.start]:02x} at column {column})"
        ) from None


def _parse(path: Path, line: int, text: str):
    """``json.loads`` of one line with one-line errors; floats keep their written form
    (:class:`WrittenFloat`)."""
    try:
        return json.loads(text, parse_float=WrittenFloat)
    except json.JSONDecodeError as exc:
        raise InputFormatError(f"{path}:{line}: malformed JSON ({exc.msg}, column {exc.colno})") from None
    except RecursionError:
        raise InputFormatError(f"{path}:{line}: malformed JSON (nested too deeply)") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python converts
        raise InputFormatError(f"{path}:{line}: malformed JSON ({_first_line(exc)})") from None


def _record(path: Path, line: int, value, text: str) -> tuple[str, dict | RecordError]:
    where = f"{path}:{line}"
    if not isinstance(value, dict):
        raise InputFormatError(f"{where}: expected a JSON object, got {type(value).__name__}")
    if _SURROGATE_ESCAPE.search(text) and (bad := _lone_surrogate(value)):
        return where, RecordError("invalid_text", f"column {bad} holds a lone surrogate escape such as \\ud800 (not valid Unicode text)")
    return where, value


def _lone_surrogate(record: dict) -> str | None:
    """The first column of ``record`` whose name or value holds an unpaired surrogate (as repr), else None."""
    for key, value in record.items():
        if not (_valid_text(key) and _valid_text(value)):
            return repr(key)
    return None


def _valid_text(value) -> bool:
    """Whether every string in a parsed JSON value encodes as UTF-8 (no unpaired surrogates)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_valid_text(k) and _valid_text(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_valid_text(v) for v in value)
    return True


def _lines(path: Path, f: IO[bytes]) -> Iterator[tuple[str, dict | RecordError]]:
    for line_no, raw in enumerate(f, 1):
        line = _decode(path, raw, line_no)
        if not line.strip():
            continue
        yield _record(path, line_no, _parse(path, line_no, line), line)


def _array(path: Path, data: bytes) -> Iterator[tuple[str, dict | RecordError]]:
    """Elements of a JSON array, decoded one by one so each knows the line it starts on."""
    text = _decode(path, data, 1)
    decoder = json.JSONDecoder(parse_float=WrittenFloat)
    i = _SPACE.match(text).end() + 1  # past "["
    line, counted_to = 1, 0
    try:
        while True:
            i = _SPACE.match(text, i).end()
            if text.startswith("]", i):
                break
            line += text.count("\n", counted_to, i)
            counted_to = i
            value, end = decoder.raw_decode(text, i)
            yield _record(path, line, value, text[i:end])
            i = _SPACE.match(text, end).end()
            if text.startswith(",", i):
                i += 1
            elif not text.startswith("]", i):
                raise json.JSONDecodeError("Expecting ',' or ']'", text, i)
    except json.JSONDecodeError as exc:
        raise InputFormatError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg}, column {exc.colno})") from None
    except RecursionError:
        raise InputFormatError(f"{path}:{line}: malformed JSON (nested too deeply)") from None
    except ValueError as exc:
        raise InputFormatError(f"{path}:{line}: malformed JSON ({_first_line(exc)})") from None
    if text[i + 1 :].strip():
        raise InputFormatError(f"{path}: extra data after the JSON array")
