"""What one import source path stands for: one or more record streams (:class:`Source`).

- a file, or a version / dataset of this project: one source (records from :mod:`.sources`);
- a Hugging Face ``datasets`` ``save_to_disk`` folder of one Dataset (``state.json`` listing its
  ``data-*.arrow`` Arrow IPC stream files): one source; split = ``state.json``'s ``_split``, else
  inferred from the folder name by the importer;
- a ``save_to_disk`` folder of a DatasetDict (``dataset_dict.json`` naming its ``splits``, one
  Dataset folder each): one source per split, split = the split's name;
- a Hub-layout folder of Parquet shards named ``<split>-NNNNN-of-NNNNN.parquet`` (optionally
  ``-<hash>`` before ``.parquet``), in the folder itself, in ``data/`` or in one folder per
  config: one source per config and split, split = the name in the files, every shard required.

Only pyarrow reads these folders (``datasets`` is not needed).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Iterator

from humanline_data.errors import InputFormatError
from humanline_data.formats.fields import RecordError
from humanline_data.formats.sources import fingerprint, read_records, source_name
from humanline_data.store import sha256_file

_SHARD = re.compile(r"^(?P<split>\w+(?:\.\w+)*)-(?P<index>\d{5})-of-(?P<count>\d{5})(?:-[0-9a-f]+)?\.parquet$")
DATASET_DICT = "dataset_dict.json"
DATASET_STATE = "state.json"
HUB_DATA_FOLDER = "data"


@dataclass(frozen=True)
class Source:
    """One record stream of an import: ``path`` names it in messages and the manifest, ``name``
    becomes the rows' ``source`` (``<format>/<name>``), ``split`` is the split its layout names
    (None: the importer infers it from ``name``), ``files`` are read in order."""

    path: Path
    name: str
    split: str | None
    files: tuple[Path, ...]

    @property
    def is_version(self) -> bool:
        """Whether this source is a version (or dataset) of this project."""
        return self.files == (self.path,) and self.path.is_dir()

    def records(self) -> Iterator[tuple[str, dict | RecordError]]:
        return chain.from_iterable(read_records(f) for f in self.files)

    def fingerprint(self) -> dict:
        """``{path, sha256}``: a file's or version's own (see :func:`.sources.fingerprint`); for a
        folder's files, sha256 over the lines ``<file name> <sha256>`` of them, and the split."""
        if self.files == (self.path,):
            return fingerprint(self.path)
        listing = "".join(f"{f.relative_to(self.path)} {sha256_file(f)}\n" for f in self.files)
        return {"path": str(self.path.resolve()), "sha256": hashlib.sha256(listing.encode()).hexdigest(), "split": self.split}


def sources_of(path: Path) -> list[Source]:
    """The sources that ``path`` (a file or folder) stands for; raises :class:`InputFormatError`
    for a broken ``datasets`` or Hub folder."""
    path = Path(path)
    if path.is_dir():
        if (path / DATASET_DICT).is_file():
            return _dataset_dict(path)
        if (path / DATASET_STATE).is_file():
            return [_dataset(path, path.name)]
        shards = _hub_shards(path)
        if shards:
            return shards
    return [Source(path, source_name(path), None, (path,))]


def _json_file(path: Path) -> dict:
    try:
        value = json.loads(path.read_bytes())
    except OSError as exc:
        raise InputFormatError(f"{path}: cannot read ({exc.strerror})") from None
    except (ValueError, RecursionError) as exc:
        raise InputFormatError(f"{path}: malformed JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(value, dict):
        raise InputFormatError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _file_names(value, where: Path, field: str) -> list[str]:
    """``value`` checked to be a list of plain names (no folders) of ``field``."""
    plain = isinstance(value, list) and all(isinstance(v, str) and v not in ("", ".", "..") and "/" not in v for v in value)
    if not plain:
        raise InputFormatError(f"{where}: {field!r} is not a list of plain file names")
    return value


def _dataset(folder: Path, name: str, split: str | None = None) -> Source:
    """The Dataset ``save_to_disk`` wrote to ``folder``: its Arrow files in ``state.json`` order."""
    state_path = folder / DATASET_STATE
    state = _json_file(state_path)
    entries = state.get("_data_files")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputFormatError(f"{state_path}: '_data_files' is not a list of {{filename}} objects")
    names = _file_names([e.get("filename") for e in entries], state_path, "_data_files")
    files = tuple(folder / n for n in names)
    for f in files:
        if not f.is_file():
            raise InputFormatError(f"{f}: listed in {state_path} but missing")
    recorded = state.get("_split")
    return Source(folder, name, split or (recorded if isinstance(recorded, str) and recorded else None), files)


def _dataset_dict(folder: Path) -> list[Source]:
    """One source per split of the DatasetDict ``save_to_disk`` wrote to ``folder``."""
    index = folder / DATASET_DICT
    splits = _file_names(_json_file(index).get("splits"), index, "splits")
    for split in splits:
        if not (folder / split / DATASET_STATE).is_file():
            raise InputFormatError(f"{folder / split}: split {split!r} named in {index} has no {DATASET_STATE}")
    return [_dataset(folder / split, folder.name, split) for split in splits]


def _hub_shards(folder: Path) -> list[Source]:
    """One source per (config folder, split) of ``<split>-NNNNN-of-NNNNN.parquet`` shards in
    ``folder`` or its subfolders; [] when there are none."""
    groups: dict[tuple[Path, str], dict[int, Path]] = defaultdict(dict)
    counts: dict[tuple[Path, str], set[int]] = defaultdict(set)
    for shard in sorted(chain(folder.glob("*.parquet"), folder.glob("*/*.parquet"))):
        match = _SHARD.match(shard.name)
        if match is None:
            continue
        key = (shard.parent, match["split"])
        groups[key][int(match["index"])] = shard
        counts[key].add(int(match["count"]))
    sources = []
    for (where, split), shards in groups.items():
        count = max(counts[(where, split)])
        if len(counts[(where, split)]) > 1 or sorted(shards) != list(range(count)):
            missing = ", ".join(f"{i:05d}" for i in range(count) if i not in shards)
            raise InputFormatError(
                f"{where}: the {split!r} shards are not one whole set of {count} "
                f"({f'missing {missing}' if missing else 'their counts or numbers disagree'})"
            )
        config = where.name if where != folder and where.name != HUB_DATA_FOLDER else None
        name = f"{folder.name}/{config}" if config else folder.name
        sources.append(Source(where, name, split, tuple(shards[i] for i in range(count))))
    return sources
