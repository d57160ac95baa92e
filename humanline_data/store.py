"""Dataset versions on disk: atomic writes, manifests, checksums, lineage, "latest".

Layout of a dataset ``<root>/<name>/``::

    v1/part-00000.parquet  v1/manifest.json
    v2/...

A version is written into a hidden temporary directory beside the versions
(``.tmp-<uuid>``) and becomes visible only by one ``rename`` to ``vN`` once every part and the
manifest are complete and fsynced, so readers never see a partial version and a killed writer
leaves nothing visible. Existing versions are never modified. The temporary directory is a
marked, locked work folder (:mod:`humanline_data.workdirs`), so those of dead writers
(``kill -9``) can be told apart and removed, and nothing else ever is (:func:`collect_garbage`,
run by every new writer of the dataset and by ``humanline-data gc``). An OSError while writing
(a full disk, an I/O error) stops the writer with one line naming the file and the OS reason,
and its temporary directory is removed. The output folder is checked first
(:func:`humanline_data.outputs.check_output`, role ``dataset``).

A version folder is named ``v<N>`` (no leading zeros) and its manifest's ``version`` is ``N``;
a folder whose manifest says another number (renamed, copied or symlinked) is refused, naming
the folder. Empty ``vN`` folders are not versions; other entries named like versions (files,
dangling links) are skipped when the next number is picked.

Opening a version verifies it: the manifest's shape, then each part's size and sha256, then its
Parquet footer, whose row count must equal the manifest's and whose schema must be the schema of
the manifest's kind, so a manifest edited to name another kind or more rows is refused; a
``.parquet`` file in the folder that the manifest does not list (a part left out) is refused too.

``manifest.json`` holds: ``version``, ``kind``, ``schema`` (Arrow schema as text), ``rows``,
``files`` (``[{name, rows, bytes, sha256}]``), ``created_at`` (UTC ISO-8601), ``command``
(argv), ``params`` (stage parameters), ``producer`` (e.g. generator/scorer model path and
content hash), ``parents`` (``[{path, version, kind, manifest_sha256}]``) and ``stats``
(stage-specific counts, e.g. dropped prompts and why).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from humanline_data import workdirs
from humanline_data.errors import CorruptVersionError, HumanlineError, WrongKindError, os_errors, os_reason
from humanline_data.layout import MANIFEST, holds_versions, version_number
from humanline_data.outputs import check_output
from humanline_data.schema import SCHEMAS, conform

_PART_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*\.parquet$")  # a plain file name inside the version
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
TMP_PREFIX = ".tmp-"
ROWS_PER_FILE = 250_000
COMMIT_TRIES = 5  # version numbers tried before a commit gives up (each lost to a concurrent writer)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def list_versions(dataset: Path) -> list[Path]:
    """The version directories of a dataset (named ``vN``, not empty), oldest first."""
    dataset = Path(dataset)
    try:
        entries = list(dataset.iterdir()) if dataset.is_dir() else []
    except OSError as exc:
        raise HumanlineError(f"{dataset}: cannot list the dataset folder ({exc.strerror})") from None
    found = [p for p in entries if version_number(p) is not None and p.is_dir() and not _is_empty(p)]
    return sorted(found, key=version_number)


def _is_empty(folder: Path) -> bool:
    try:
        return next(os.scandir(folder), None) is None
    except OSError:
        return False  # unreadable: let opening it say what is wrong


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
    """The manifest of the version folder ``version``, checked for shape and for naming this
    folder (``vN`` with ``version`` N); raises :class:`CorruptVersionError` naming what is wrong."""
    version = Path(version)
    where = version / MANIFEST
    try:
        manifest = json.loads(where.read_bytes())
    except FileNotFoundError:
        raise CorruptVersionError(
            f"{version}: version folder without {MANIFEST} (deleted, or a partial copy); "
            "remove or repair the folder, or name another version"
        ) from None
    except OSError as exc:
        raise CorruptVersionError(f"{where}: cannot read ({exc.strerror})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, absurd nesting
        raise CorruptVersionError(f"{where}: malformed JSON ({getattr(exc, 'msg', exc)})") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise CorruptVersionError(f"{where}: {problem}")
    if version_number(version) != manifest["version"]:
        raise CorruptVersionError(
            f"{version}: folder name does not match its manifest, which says version {manifest['version']} "
            f"(renamed, copied or linked?); a version lives in a folder named v{manifest['version']}"
        )
    return manifest


def _manifest_problem(m: Any) -> str | None:
    """What is wrong with the shape of a parsed manifest, or None."""
    if not isinstance(m, dict):
        return f"not a JSON object but {type(m).__name__}"
    for key, kind in (("version", int), ("kind", str), ("rows", int), ("files", list), ("parents", list)):
        if not isinstance(m.get(key), kind) or isinstance(m.get(key), bool):
            return f"field {key!r} is missing or not {'a list' if kind is list else kind.__name__}"
    if m["kind"] not in SCHEMAS:
        return f"unknown kind {m['kind']!r}"
    if m["version"] < 1:
        return f"version {m['version']} (must be >= 1)"
    for i, f in enumerate(m["files"]):
        if not isinstance(f, dict):
            return f"files[{i}] is not an object"
        if not isinstance(f.get("name"), str) or not _PART_RE.match(f["name"]):
            return f"files[{i}] names {f.get('name')!r}, not a part file inside the version"
        for key in ("rows", "bytes"):
            if not isinstance(f.get(key), int) or isinstance(f.get(key), bool) or f[key] < 0:
                return f"files[{i}].{key} is missing or not a count"
        if not isinstance(f.get("sha256"), str) or not _SHA256_RE.match(f["sha256"]):
            return f"files[{i}].sha256 is missing or not 64 hex digits"
        if any(f["name"] == earlier["name"] for earlier in m["files"][:i]):
            return f"files[{i}] names {f['name']} again (each part is read once)"
    for i, parent in enumerate(m["parents"]):
        if not isinstance(parent, dict) or not isinstance(parent.get("path"), str):
            return f"parents[{i}] is not an object with a 'path'"
    if sum(f["rows"] for f in m["files"]) != m["rows"]:
        return f"rows {m['rows']} is not the sum of its files' rows"
    return None


def verify(version: Path, checksums: bool = True) -> dict:
    """Check the parts against the manifest: no ``.parquet`` file in the folder that it does not
    list, each listed one's size and sha256 (unless not ``checksums``), then its Parquet footer's
    row count and schema against the manifest's rows and kind; return the manifest. Without
    checksums only the footers are read (cheap enough for listings)."""
    version = Path(version)
    manifest = read_manifest(version)
    listed = {entry["name"] for entry in manifest["files"]}
    with os_errors(version, "cannot list the version folder", CorruptVersionError):
        unlisted = sorted(n for n in os.listdir(version) if n.endswith(".parquet") and n not in listed)
    if unlisted:
        raise CorruptVersionError(f"{version / unlisted[0]}: a part in the version folder that its manifest does not list")
    for entry in manifest["files"]:
        part = version / entry["name"]
        if not part.is_file():
            raise CorruptVersionError(f"{part}: part listed in the manifest is missing")
        if checksums:
            with os_errors(part, "cannot read", CorruptVersionError):
                size, digest = part.stat().st_size, sha256_file(part)
            if size != entry["bytes"]:
                raise CorruptVersionError(f"{part}: {size} bytes, manifest says {entry['bytes']} (cut off mid-write?)")
            if digest != entry["sha256"]:
                raise CorruptVersionError(f"{part}: sha256 does not match the manifest")
        _check_footer(part, entry["rows"], manifest["kind"])
    return manifest


def _check_footer(part: Path, rows: int, kind: str) -> None:
    """Raise unless the Parquet footer of ``part`` says ``rows`` rows of kind ``kind``'s schema."""
    try:
        footer = pq.read_metadata(part)
        found, schema = footer.num_rows, footer.schema.to_arrow_schema().remove_metadata()
    except (pa.ArrowException, OSError) as exc:
        raise CorruptVersionError(f"{part}: not a readable Parquet file ({os_reason(exc)})") from None
    if found != rows:
        raise CorruptVersionError(f"{part}: holds {found} rows, the manifest says {rows}")
    difference = _schema_difference(schema, SCHEMAS[kind])
    if difference:
        raise CorruptVersionError(f"{part}: {difference}, so it does not hold the kind {kind!r} its manifest says")


def _schema_difference(found: pa.Schema, expected: pa.Schema) -> str | None:
    """The first way ``found`` differs from ``expected`` in words, or None when they are equal."""
    if found.equals(expected):
        return None
    missing = [n for n in expected.names if n not in found.names]
    if missing:
        return f"column {missing[0]!r} is missing"
    extra = [n for n in found.names if n not in expected.names]
    if extra:
        return f"column {extra[0]!r} is not in the schema"
    for field in expected:
        other = found.field(field.name)
        if not other.equals(field):
            return f"column {field.name!r} is {other.type}{'' if other.nullable else ' not null'}, expected {field.type}"
    return "columns are in another order"


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
        tables = []
        for part in self.files:
            with os_errors(part, "cannot read", CorruptVersionError):
                tables.append(pq.read_table(part, columns=columns))
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
        self.dataset = check_output(self.dataset, "dataset")
        try:
            self._made = workdirs.make_folders(self.dataset)
        except (OSError, RuntimeError) as exc:  # a file in the way, a symlink loop, no permission
            raise HumanlineError(f"{self.dataset}: cannot create the dataset folder ({os_reason(exc)})") from None
        try:
            collect_garbage(self.dataset)
            self._work = _new_tmp(self.dataset)
        except BaseException:
            workdirs.remove_if_empty(self._made)
            raise
        self.tmp = self._work.path
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
        with os_errors(part):
            pq.write_table(head, part, compression="zstd")
            _fsync(part)
            entry = {"name": name, "rows": head.num_rows, "bytes": part.stat().st_size, "sha256": sha256_file(part)}
        self._files.append(entry)

    def commit(self) -> Path:
        """Finish the parts, write the manifest, and rename into place as ``vN``; on any failure
        the temporary directory is removed and nothing becomes visible."""
        try:
            return self._commit()
        except BaseException:
            self.abort()
            raise

    def _commit(self) -> Path:
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
        for _ in range(COMMIT_TRIES):
            number = _next_number(self.dataset)
            manifest["version"] = number
            with os_errors(self.tmp / MANIFEST):
                (self.tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
                _fsync(self.tmp / MANIFEST)
            self._work.unmark()  # the version holds its parts and manifest only
            target = self.dataset / f"v{number}"
            try:
                os.rename(self.tmp, target)  # atomic; fails if another writer took vN meanwhile
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                    continue
                raise HumanlineError(f"{target}: cannot make the version visible ({exc.strerror})") from None
            self._work.release()
            self.path = target
            with os_errors(self.dataset, "cannot sync the dataset folder"):
                _fsync(self.dataset)
            return target
        raise HumanlineError(
            f"{target}: no free version number after {COMMIT_TRIES} tries; {_describe(target)} is in the way"
        )

    def abort(self) -> None:
        """Remove the temporary directory, and the dataset folder when this writer made it and it
        is empty (idempotent; nothing once committed)."""
        if self._work.held:
            self._work.remove()
            workdirs.remove_if_empty(self._made)


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


def _next_number(dataset: Path) -> int:
    """One more than the highest ``vN`` name in ``dataset``, counting every entry so named
    (files, dangling links and empty folders too), so no such entry is ever in the way."""
    with os_errors(dataset, "cannot list the dataset folder"):
        numbers = [version_number(Path(name)) for name in os.listdir(dataset)]
    return max((n for n in numbers if n is not None), default=0) + 1


def _describe(path: Path) -> str:
    if path.is_symlink():
        return f"a symlink to {os.readlink(path)}" + ("" if path.exists() else " (dangling)")
    if path.is_dir():
        return "a folder"
    return "a file" if path.exists() else "nothing (it vanished)"


@contextlib.contextmanager
def _dataset_lock(dataset: Path, how: int) -> Iterator[bool]:
    """``flock`` the dataset folder itself (yields whether it is held): shared while a writer
    creates and marks its temporary directory, exclusive while :func:`collect_garbage` looks
    for abandoned ones (so it never sees one half made)."""
    fd = os.open(dataset, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield workdirs.try_lock(fd, how)
    finally:
        os.close(fd)


def _new_tmp(dataset: Path) -> workdirs.WorkFolder:
    """A fresh marked and locked ``.tmp-<uuid>`` work folder in ``dataset``."""
    with os_errors(dataset, "cannot write a version here"):
        with _dataset_lock(dataset, fcntl.LOCK_SH):
            return workdirs.create(dataset / f"{TMP_PREFIX}{uuid.uuid4().hex}", "version")


def is_dataset(folder: Path) -> bool:
    """Whether ``folder`` holds versions or temporary folders of this project's writers."""
    return holds_versions(folder) or bool(_temporaries(folder))


def collect_garbage(dataset: str | os.PathLike) -> list[tuple[Path, int]]:
    """Remove the temporary directories of dead writers in ``dataset``; ``[(path, bytes)]`` freed.

    Only ``.tmp-*`` folders that carry this project's marker and whose lock is free are removed
    (:func:`humanline_data.workdirs.remove_abandoned`); anything else is left alone.
    """
    dataset = Path(dataset)
    freed = []
    with os_errors(dataset, "cannot clean up temporary folders"):
        with _dataset_lock(dataset, fcntl.LOCK_EX) as held:
            for path in _temporaries(dataset) if held else ():
                size = workdirs.remove_abandoned(path)
                if size is not None:
                    freed.append((path, size))
    return freed


def _temporaries(dataset: Path) -> list[Path]:
    """The marked ``.tmp-*`` folders (not links) in ``dataset``, by name."""
    try:
        with os.scandir(dataset) as entries:
            names = sorted(e.name for e in entries if e.name.startswith(TMP_PREFIX) and e.is_dir(follow_symlinks=False))
    except OSError:
        return []
    return [dataset / name for name in names if workdirs.is_marked(dataset / name)]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def iter_batches(version: Version, batch_rows: int = 65_536, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream a version's rows with bounded memory, part by part."""
    for part in version.files:
        with os_errors(part, "cannot read", CorruptVersionError):
            yield from pq.ParquetFile(part).iter_batches(batch_size=batch_rows, columns=columns)
