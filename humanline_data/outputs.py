"""The one check every output path goes through before anything is written (``--out`` of every
data stage, and of training runs, evaluations and plots).

Roles:

``dataset``  a data stage's ``--out``: a dataset folder (it may already hold versions)
``run``      a training run directory
``file``     a single output file (an evaluation JSON, a plot)

Refused, with one line naming the path and why: the empty path or ``.`` (click turns ``--out
""`` into ``.``); the filesystem root (or a path resolving to it); anything that is, or lies
inside, a version folder (``vN`` with a ``manifest.json``; the path as given, made absolute
and resolved through links, and all their parents are checked), since versions are immutable;
for ``run`` and ``file``, a dataset folder (one that holds versions) or anything inside one;
for ``dataset``, a folder inside another dataset folder (the path itself may be a dataset);
an existing file where a folder is wanted (``dataset``, ``run``) and an existing folder where a
file is wanted (``file``); a path that cannot be resolved (a symlink loop).
"""

from __future__ import annotations

import os
from pathlib import Path

from humanline_data.errors import HumanlineError, os_reason
from humanline_data.layout import holds_versions, is_version

ROLES = {"dataset": "dataset folder", "run": "run folder", "file": "output file"}


def check_output(path: str | os.PathLike, role: str) -> Path:
    """``path`` as a Path once it may be written as ``role`` (a key of :data:`ROLES`); else
    raise :class:`HumanlineError` naming the path and why (see the module docstring)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    noun = ROLES[role]
    raw = os.fspath(path)
    path = Path(raw)
    if path == Path("."):
        thing = "file" if role == "file" else "folder"
        raise HumanlineError(f"--out must name a {thing}, not {raw!r} (the empty path or the current folder)")
    try:
        absolute = Path(os.path.abspath(path))
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise HumanlineError(f"{path}: cannot use as the {noun} ({os_reason(exc)})") from None
    if absolute == Path(absolute.anchor) or real == Path(real.anchor):
        raise HumanlineError(f"{path}: the filesystem root cannot be the {noun}")
    spellings = (path, absolute, real)
    for candidate in _with_parents(spellings):
        if is_version(candidate):
            where = f", so --out takes a dataset folder such as {candidate.parent}" if role == "dataset" else ""
            raise HumanlineError(f"{path}: lies inside the version {candidate}; versions are immutable{where}")
    inside = _with_parents(p.parent for p in spellings) if role == "dataset" else _with_parents(spellings)
    for candidate in inside:
        if holds_versions(candidate):
            if candidate in spellings:
                raise HumanlineError(f"{path}: is the dataset folder {candidate} (it holds versions), not a {noun}")
            nested = "another dataset folder" if role == "dataset" else f"a {noun}"
            raise HumanlineError(
                f"{path}: lies inside the dataset folder {candidate} (it holds versions), which cannot hold {nested}"
            )
    if role == "file" and path.is_dir():
        raise HumanlineError(f"{path}: is a folder; --out names the {noun}")
    if role != "file" and path.exists() and not path.is_dir():
        raise HumanlineError(f"{path}: exists and is not a folder, so it cannot be the {noun}")
    return path


def _with_parents(paths) -> list[Path]:
    """Each path and all its parents, each once, in order."""
    seen: dict[Path, None] = {}
    for p in paths:
        for q in (p, *p.parents):
            seen.setdefault(q, None)
    return list(seen)
