"""Dataset versions on disk: atomic writes, manifests, checksums, lineage, "latest".

Layout of a dataset ``<root>/<name>/``::

    v1/part-00000.parquet  v1/manifest.json
    v2/...

A version is written into a hidden temporary directory beside the versions
(``.tmp-<uuid>``) and becomes visible only by one ``rename`` to ``vN`` once every part and the
manifest are complete and fsynced, so readers never see a partial version and a killed writer
leaves nothing visible. Existing versions are never modified.

``manifest.json`` holds: ``version``, ``kind``, ``schema`` (Arrow schema as text), ``rows``,
``files`` (``[{name, rows, bytes, sha256}]``), ``created_at`` (UTC ISO-8601), ``command``
(argv), ``params`` (stage parameters), ``producer`` (e.g. generator/scorer model path and
content hash), ``parents`` (``[{path, version, kind, manifest_sha256}]``) and ``stats``
(stage-specific counts, e.g. dropped prompts and why).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from humanline_data.errors import CorruptVersionError, HumanlineError, WrongKindError
from humanline_data.schema import SCHEMAS, conform

MANIFEST = "manifest.json"
_VERSION_RE = re.compile(r"^v(\d+)$")
ROWS_PER_FILE = 250_000


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def version_number(path: Path) -> int | None:
    m = _VERSION_RE.match(path.name)
    return int(m.group(1)) if m else None


def list_versions(dataset: Path) -> list[Path]:
    """The complete version directories of a dataset, oldest first."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        return []
    found = [p for p in dataset.iterdir() if p.is_dir() and version_number(p) is not None]
    return sorted(found, key=version_number)


def resolve_version(path: str | os.PathLike) -> Path:
    """A version directory for ``path``: itself if it is one, else its dataset's latest version."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    versions = list_versions(path)
    if not versions:
        raise HumanlineError(f"{path}: not a dataset version or a dataset with versions")
    return versions[-1]


def read_manifest(version: Path) -> dict:
    version = Path(version)
    try:
        return json.loads((version / MANIFEST).read_text())
    except FileNotFoundError:
        raise CorruptVersionError(f"{version}: no {MANIFEST}") from None
    except json.JSONDecodeError as exc:
        raise CorruptVersionError(f"{version}/{MANIFEST}: malformed JSON ({exc.msg})") from None


def verify(version: Path) -> dict:
    """Check every part against the manifest (sha256, rows); return the manifest."""
    version = Path(version)
    manifest = read_manifest(version)
    for entry in manifest["files"]:
        part = version / entry["name"]
        if not part.is_file():
            raise CorruptVersionError(f"{part}: part listed in the manifest is missing")
        if part.stat().st_size != entry["bytes"]:
            raise CorruptVersionError(
                f"{part}: {part.stat().st_size} bytes, manifest says {entry['bytes']} (cut off mid-write?)"
            )
        if sha256_file(part) != entry["sha256"]:
            raise CorruptVersionError(f"{part}: sha256 does not match the manifest")
    return manifest


@dataclass
class Version:
    """An opened, verified version: its directory and manifest."""

    path: Path
    manifest: dict

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def files(self) -> list[Path]:
        return [self.path / f["name"] for f in self.manifest["files"]]

    def read(self, columns: list[str] | None = None) -> pa.Table:
        """The whole version as one table (schema of its kind)."""
        if not self.files:
            return SCHEMAS[self.kind].empty_table()
        tables = [pq.read_table(p, columns=columns) for p in self.files]
        return pa.concat_tables(tables)

    def parent_ref(self) -> dict:
        """How a child version names this one in its ``parents``."""
        return {
            "path": str(self.path.resolve()),
            "version": version_number(self.path),
            "kind": self.kind,
            "manifest_sha256": sha256_file(self.path / MANIFEST),
        }


def open_version(path: str | os.PathLike, kinds: tuple[str, ...] | None = None) -> Version:
    """Resolve, verify and open a version; raise WrongKindError unless its kind is in ``kinds``."""
    version = resolve_version(path)
    manifest = verify(version)
    if kinds is not None and manifest["kind"] not in kinds:
        raise WrongKindError(
            f"{version}: kind {manifest['kind']!r}, this stage needs {' or '.join(kinds)}"
        )
    return Version(version, manifest)


@dataclass
class VersionWriter:
    """Writes the next version of ``dataset``; use :func:`write_version` as a context manager."""

    dataset: Path
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    parents: list[dict] = field(default_factory=list)
    producer: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    rows_per_file: int = ROWS_PER_FILE
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.dataset = Path(self.dataset)
        self.dataset.mkdir(parents=True, exist_ok=True)
        self.tmp = self.dataset / f".tmp-{uuid.uuid4().hex}"
        self.tmp.mkdir()
        self._files: list[dict] = []
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.path: Path | None = None

    def write(self, table: pa.Table) -> None:
        """Append rows (validated and cast to the kind's schema) to the version."""
        table = conform(table, self.kind, where=f"{self.kind} rows")
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self.rows_per_file:
            self._flush(self.rows_per_file)

    def _flush(self, rows: int) -> None:
        if not self._pending:  # a version with no rows still gets one (empty) part
            self._pending = [SCHEMAS[self.kind].empty_table()]
        merged = pa.concat_tables(self._pending).combine_chunks()
        head, rest = merged.slice(0, rows), merged.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        name = f"part-{len(self._files):05d}.parquet"
        part = self.tmp / name
        pq.write_table(head, part, compression="zstd")
        _fsync(part)
        self._files.append(
            {"name": name, "rows": head.num_rows, "bytes": part.stat().st_size, "sha256": sha256_file(part)}
        )

    def commit(self) -> Path:
        """Finish the parts, write the manifest, and rename into place as ``vN``."""
        if self._pending_rows or not self._files:
            self._flush(self._pending_rows)
        manifest = {
            "kind": self.kind,
            "schema": SCHEMAS[self.kind].to_string(show_schema_metadata=False),
            "rows": sum(f["rows"] for f in self._files),
            "files": self._files,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": self.command,
            "params": self.params,
            "producer": self.producer,
            "parents": self.parents,
            "stats": self.stats,
        }
        while True:
            existing = [version_number(p) for p in list_versions(self.dataset)]
            number = max(existing, default=0) + 1
            manifest["version"] = number
            (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
            _fsync(self.tmp / MANIFEST)
            target = self.dataset / f"v{number}"
            try:
                os.rename(self.tmp, target)  # atomic; fails if another writer took vN
            except OSError:
                if target.exists():
                    continue
                raise
            _fsync(self.dataset)
            self.path = target
            return target

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class write_version:  # noqa: N801 - used as a context manager, reads like a function
    """``with write_version(out, kind, ...) as w: w.write(table)`` → ``w.path`` is ``out/vN``.

    On any exception inside the block the temporary directory is removed and nothing becomes
    visible.
    """

    def __init__(self, dataset: str | os.PathLike, kind: str, **kwargs: Any) -> None:
        self.writer = VersionWriter(Path(dataset), kind, **kwargs)

    def __enter__(self) -> VersionWriter:
        return self.writer

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.writer.commit()
        else:
            self.writer.abort()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_batches(version: Version, batch_rows: int = 65_536, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream a version's rows with bounded memory, part by part."""
    for part in version.files:
        yield from pq.ParquetFile(part).iter_batches(batch_size=batch_rows, columns=columns)
