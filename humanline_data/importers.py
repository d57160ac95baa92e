"""``import``: outside data (JSON, JSON lines, gzip, Parquet, ``datasets`` and Hub folders; see
:mod:`humanline_data.formats` and :mod:`humanline_data.formats.layouts`) -> one new version of
kind prompts, completions, scored, pairs or unpaired; and versions of this project, each
imported as its own kind (same rows, same ``prompt_id``; ``--format`` applies to files only)
with the new version's ``parents`` naming it.

The driver reads every source record, lets the format's reader turn it into a row, then fills
the contract's bookkeeping columns:

- ``prompt_id`` = :func:`humanline_data.schema.prompt_id` of the prompt messages;
- ``source`` = ``<format>/<file name without suffixes>`` unless the record names one;
- ``split`` (prompts, completions, scored) = ``split`` argument, else the record's ``split``,
  else the split its folder names (``datasets``/Hub layouts), else inferred from the file name
  (``train``; ``test``/``eval`` -> test; ``val``/``dev`` -> validation), else ``train`` as
  Hugging Face ``datasets`` names the rows of a file without a split (the manifest's
  ``stats.split_defaulted_to_train`` lists those sources);
- ``sample_idx`` (completions, scored) = the record's, else 0, 1, ... per prompt in file order;
- ``metadata`` = JSON object of the columns the reader did not use (merged with an incoming
  ``metadata`` object), null when there are none.

Prompt sets keep the first of repeated prompts (counted as skipped ``duplicate_prompt``).
Any other bad record stops the import with ``file:line: <problem> (--skip-invalid skips and
counts such records)``, or, with ``skip_invalid``, is skipped and counted by reason in the
manifest's ``stats.skipped``.
Nothing is written unless the whole import succeeds.
"""

from __future__ import annotations

import itertools
import json
import re
from importlib.metadata import version as package_version
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa

from humanline_data import store
from humanline_data.errors import InputFormatError, SchemaError
from humanline_data.formats import FORMATS, READERS, detect
from humanline_data.formats.fields import RecordError
from humanline_data.formats.layouts import sources_of
from humanline_data.formats.sources import version_records
from humanline_data.outputs import check_output
from humanline_data.schema import SCHEMAS, prompt_id

_SPLIT_WORDS = {
    "train": "train",
    "test": "test",
    "eval": "test",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
}
_CHUNK_ROWS = 20_000
DEFAULT_SPLIT = "train"
VERSION_FORMAT = "version"  # the format ``params.sources`` records for a version of this project
SKIP_HINT = "(--skip-invalid skips and counts such records)"


def infer_split(name: str) -> str | None:
    """``train``/``test``/``validation`` from words of a file name (``gsm8k_test`` -> test), else None."""
    for word in re.split(r"[^a-z0-9]+", name.lower()):
        if word in _SPLIT_WORDS:
            return _SPLIT_WORDS[word]
    return None


def _metadata(leftover: dict, extra: dict | None) -> str | None:
    """JSON object of the unused columns, merged over an incoming ``metadata`` object."""
    meta: dict = {}
    inherited = leftover.pop("metadata", None)
    if isinstance(inherited, str):
        try:
            inherited = json.loads(inherited)
        except json.JSONDecodeError:
            pass
    if isinstance(inherited, dict):
        meta.update(inherited)
    elif inherited is not None:
        meta["metadata"] = inherited
    meta.update(extra or {})
    meta.update(leftover)
    return json.dumps(meta, ensure_ascii=False, default=str) if meta else None


class _Rows:
    """Accumulates converted rows of one kind as Arrow chunks, with the bookkeeping columns."""

    def __init__(self, split: str | None, skip_invalid: bool) -> None:
        self.split = split
        self.skip_invalid = skip_invalid
        self.kind: str | None = None
        self.chunks: list[pa.Table] = []
        self.pending: list[dict] = []
        self.seen: set = set()
        self.next_sample: Counter = Counter()
        self.skipped: Counter = Counter()
        self.without_answer = 0
        self.split_defaulted: set[str] = set()

    def add(self, kind: str, row: dict, where: str, source: str, file_split: str | None) -> None:
        if self.kind is None:
            self.kind = kind
        elif kind != self.kind:
            raise InputFormatError(
                f"{where}: a {kind} record among {self.kind} records (one import writes one kind); import them separately"
            )
        columns = SCHEMAS[kind].names
        row["prompt_id"] = pid = row.get("prompt_id") or prompt_id(row["messages"])  # a version's rows keep theirs
        row.setdefault("source", source)
        if "split" in columns:
            row["split"] = self.split or row.get("split") or file_split
            if row["split"] is None:
                row["split"] = DEFAULT_SPLIT
                self.split_defaulted.add(source)
        if not self._admit(kind, row, pid):
            return
        if "answer" in columns and row.get("answer") is None:
            self.without_answer += 1
        self.pending.append(row)
        if len(self.pending) >= _CHUNK_ROWS:
            self.flush()

    def _admit(self, kind: str, row: dict, pid: str) -> bool:
        """Number samples and drop repeated prompts; False when the row is skipped."""
        if kind == "prompts":
            if pid in self.seen:
                self.skipped["duplicate_prompt"] += 1
                return False
            self.seen.add(pid)
        elif kind in ("completions", "scored"):
            if row["sample_idx"] is None:
                row["sample_idx"] = self.next_sample[pid]
            key = (pid, row["sample_idx"])
            if key in self.seen:
                raise RecordError("duplicate_sample", f"duplicate prompt_id/sample_idx ({pid}, {row['sample_idx']})")
            self.seen.add(key)
            self.next_sample[pid] = max(self.next_sample[pid], row["sample_idx"] + 1)
        return True

    def flush(self) -> None:
        if not self.pending:
            return
        try:
            self.chunks.append(pa.Table.from_pylist(self.pending, schema=SCHEMAS[self.kind]))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise SchemaError(f"{self.kind} rows: {exc}") from None
        self.pending = []


def _format_of(fmt: str, path: Path, head: list[tuple[str, dict | RecordError]]) -> str:
    """``fmt``, or for auto the format of the first readable record of ``head`` (the records up to
    and including it); files with no readable record keep "auto" (they add no rows)."""
    if fmt != "auto":
        return fmt
    if not head:
        raise InputFormatError(f"{path}: no records")
    where, record = head[-1]
    return fmt if isinstance(record, RecordError) else detect(record, where)


def _own_kind(head: list[tuple[str, dict | RecordError]]) -> str | None:
    """The kind whose columns the first readable record of ``head`` has exactly (a file of this
    project's own rows, e.g. from ``export --format jsonl``), else None."""
    record = head[-1][1] if head else None
    if isinstance(record, dict):
        return next((kind for kind, schema in SCHEMAS.items() if set(record) == set(schema.names)), None)
    return None


def import_sources(
    sources: Iterable[str | Path],
    out: str | Path,
    fmt: str = "auto",
    split: str | None = None,
    limit: int | None = None,
    skip_invalid: bool = False,
) -> Path:
    """Import ``sources`` (files or dataset versions) in ``fmt`` as the next version of ``out``.

    ``limit`` caps the records read over all sources. Returns the new version's path. Raises
    :class:`InputFormatError` / :class:`SchemaError` (one line, ``file:line`` where there is one).
    """
    if fmt not in FORMATS:
        raise InputFormatError(f"unknown format {fmt!r} (expected one of {', '.join(FORMATS)})")
    paths = [Path(s) for s in sources]
    if not paths:
        raise InputFormatError("no sources given")
    for path in paths:
        if not path.exists():
            raise InputFormatError(f"{path}: source file not found")
    check_output(out, "dataset")
    sources = [source for path in paths for source in sources_of(path)]
    rows = _Rows(split, skip_invalid)
    read = 0
    described, parents = [], []
    for source in sources:
        if limit is not None and read >= limit:
            break
        if source.is_version:  # a version of this project: rows of its kind as they are
            version = store.open_version(source.path)
            parents.append(version.parent_ref())
            head, records, path_fmt, own_kind = [], version_records(version), VERSION_FORMAT, version.kind
        else:
            records = source.records()
            head = _up_to_first_readable(records)
            own_kind = _own_kind(head) if fmt == "auto" else None  # rows this project exported
            path_fmt = VERSION_FORMAT if own_kind else _format_of(fmt, source.path, head)
        name, file_split = f"{path_fmt}/{source.name}", source.split or infer_split(source.name)
        n = 0
        for where, record in itertools.chain(head, records):
            if limit is not None and read >= limit:
                break
            read += 1
            n += 1
            _convert(path_fmt, where, record, name, file_split, rows, own_kind)
        described.append({**source.fingerprint(), "format": path_fmt, "rows_read": n})
    rows.flush()
    written = sum(t.num_rows for t in rows.chunks)
    skipped = dict(rows.skipped)
    if not written:
        raise InputFormatError(f"no rows to import from {', '.join(map(str, paths))} (read {read}, skipped {skipped})")
    params = {"format": fmt, "split": split, "limit": limit, "skip_invalid": skip_invalid, "sources": described}
    stats = {"rows_read": read, "rows_written": written, "skipped": skipped}
    if "answer" in SCHEMAS[rows.kind].names:
        stats["rows_without_answer"] = rows.without_answer
    if rows.split_defaulted:
        stats["split_defaulted_to_train"] = sorted(rows.split_defaulted)
    producer = {"name": "humanline_data.importers", "version": package_version("humanline")}
    with store.write_version(out, rows.kind, params=params, producer=producer, stats=stats, parents=parents) as writer:
        for chunk in rows.chunks:
            writer.write(chunk)
    return writer.path


def _up_to_first_readable(records: Iterator[tuple[str, dict | RecordError]]) -> list[tuple[str, dict | RecordError]]:
    """Records taken from ``records`` up to and including the first that is not a RecordError."""
    head = []
    for item in records:
        head.append(item)
        if not isinstance(item[1], RecordError):
            break
    return head


def _convert(fmt: str, where: str, record: dict | RecordError, source: str, file_split: str | None,
             rows: _Rows, own_kind: str | None = None) -> None:
    """Convert one record (or the error that makes it unreadable) into ``rows``; bad records
    raise with ``where`` or are counted as skipped. ``own_kind``: the record is a row of that
    kind (from a version of this project), taken as it is."""
    try:
        if isinstance(record, RecordError):
            raise record
        if own_kind is not None:
            kind, row = own_kind, dict(record)
        else:
            leftover = dict(record)
            kind, row = READERS[fmt](leftover)
            row["metadata"] = _metadata(leftover, row.pop("metadata", None))
        rows.add(kind, row, where, source, file_split)
    except RecordError as err:
        if rows.skip_invalid:
            rows.skipped[err.reason] += 1
            return
        if err.reason == "missing_column":
            hint = f" (record has {', '.join(record)})"
        else:
            hint = f" {SKIP_HINT}"
        raise RecordError(err.reason, f"{where}: format {fmt}: {err}{hint}") from None
