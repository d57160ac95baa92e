"""``export``: one dataset version -> one file that another trainer reads (see
:mod:`humanline_data.targets` for what each format and kind becomes).

The version is verified first (checksums), its rows are streamed batch by batch, and the file is
written beside ``out`` under a hidden name (``.<name>.tmp-<hex>``), fsynced, then hard-linked to
``out``, which fails if anything is there: an export never overwrites a file, and a reader never
sees a partial one. ``out`` may not lie inside a dataset folder or a version (the store owns
those), and its folder is created when missing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import uuid
from pathlib import Path
from typing import IO, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from humanline_data import store
from humanline_data.errors import HumanlineError, InputFormatError, WrongKindError
from humanline_data.formats.sources import PARQUET_SUFFIX
from humanline_data.outputs import check_output
from humanline_data.targets import EXPORT_FORMATS, TARGETS

PARQUET_ROWS = 10_000  # records per Parquet row group written


def export(version_path: str | os.PathLike, fmt: str, out: str | os.PathLike) -> tuple[Path, int]:
    """Write the version at ``version_path`` (a version, or a dataset = its latest) in ``fmt`` to
    the new file ``out``; returns ``(out, records written)``. Raises a one-line
    :class:`HumanlineError` for an unknown format, a kind the format refuses, or a bad ``out``."""
    if fmt not in TARGETS:
        raise InputFormatError(f"unknown export format {fmt!r} (expected one of {', '.join(EXPORT_FORMATS)})")
    target = TARGETS[fmt]
    version = store.open_version(version_path)
    if version.kind not in target.kinds:
        raise WrongKindError(
            f"{version.path}: kind {version.kind} has no {fmt} form ({target.refused}); "
            f"{fmt} takes {', '.join(target.kinds)}"
        )
    out = Path(out)
    writes_parquet = target.parquet_schema is not None
    if writes_parquet != out.name.endswith(PARQUET_SUFFIX):
        raise HumanlineError(
            f"{out}: {fmt} writes {'Parquet' if writes_parquet else 'JSON lines'}, so name the file "
            f"{'*' if writes_parquet else 'other than *'}{PARQUET_SUFFIX} (import tells the two apart by the name)"
        )
    check_export_path(out)
    records = target.kinds[version.kind](_rows(version))
    with _new_file(out) as f:
        if not writes_parquet:
            written = _write_jsonl(records, f)
        else:
            written = _write_parquet(records, target.parquet_schema(version.kind), f)
    return out, written


def check_export_path(out: Path) -> None:
    """Raise unless ``out`` can become a new export file: a place for a file
    (:func:`humanline_data.outputs.check_output`) with nothing there yet."""
    check_output(out, "file")
    if out.exists() or out.is_symlink():
        raise HumanlineError(f"{out}: already exists; export never overwrites (remove it or choose another --out)")


def _rows(version: store.Version) -> Iterator[dict]:
    for batch in store.iter_batches(version):
        yield from batch.to_pylist()


@contextlib.contextmanager
def _new_file(out: Path) -> Iterator[IO[bytes]]:
    """An open temporary file beside ``out`` that becomes ``out`` when the block succeeds."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HumanlineError(f"{out.parent}: cannot create the folder ({exc.strerror})") from None
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, out)
        except FileExistsError:
            raise HumanlineError(f"{out}: appeared while exporting; export never overwrites") from None
        folder = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        raise HumanlineError(f"{out}: cannot write ({exc.strerror or exc})") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_jsonl(records: Iterable[dict], f: IO[bytes]) -> int:
    n = 0
    for n, record in enumerate(records, 1):
        f.write(json.dumps(record, ensure_ascii=False).encode() + b"\n")
    return n


def _write_parquet(records: Iterable[dict], schema: pa.Schema, f: IO[bytes]) -> int:
    n = 0
    records = iter(records)
    with pq.ParquetWriter(f, schema, compression="zstd") as writer:
        while chunk := list(itertools.islice(records, PARQUET_ROWS)):
            writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
            n += len(chunk)
    return n
