"""The one check every output path goes through before anything is written (``--out`` of every
data stage, and of training runs, evaluations and plots).

Roles:

``dataset``  a data stage's ``--out``: a dataset folder (it may already hold versions)
``run``      a training run directory
``file``     a single output file (an evaluation JSON, a plot)

Refused, with one line naming the path and why: the empty path or ``.`` (click turns ``--out
""`` into ``.``); the filesystem root (or a path resolving to it); anything that is, or lies
inside, a version folder (``vN`` with a ``manifest.json``; the path made absolute, and resolved
through links, and all their parents are checked), since versions are immutable;
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
    raw = os.fspath(path)
    path = Path(raw)
    if path == Path("."):
        thing = "file" if role == "file" else "folder"
        raise HumanlineError(f"--out must name a {thing}, not {raw!r} (the empty path or the current folder)")
    try:
        problem = _problem(path, role, ROLES[role])
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a name too long, a NUL byte
        problem = f"cannot use as the {ROLES[role]} ({os_reason(exc)})"
    if problem:
        raise HumanlineError(f"{path}: {problem}")
    return path


def _problem(path: Path, role: str, noun: str) -> str | None:
    """Why ``path`` cannot be written as ``role`` (called ``noun``), or None; raises OSError."""
    absolute, real = Path(os.path.abspath(path)), path.resolve()
    if absolute == Path(absolute.anchor) or real == Path(real.anchor):
        return f"the filesystem root cannot be the {noun}"
    spellings = (absolute, real)
    for candidate in _with_parents(spellings):
        if is_version(candidate):
            where = f", so --out takes a dataset folder such as {candidate.parent}" if role == "dataset" else ""
            return f"lies inside the version {candidate}; versions are immutable{where}"
    inside = _with_parents(p.parent for p in spellings) if role == "dataset" else _with_parents(spellings)
    for candidate in inside:
        if holds_versions(candidate):
            if candidate in spellings:
                return f"is the dataset folder {candidate} (it holds versions), not a {noun}"
            return f"lies inside the dataset folder {candidate} (it holds versions), so it cannot be the {noun}"
    if role == "file" and path.is_dir():
        return f"is a folder; --out names the {noun}"
    if role != "file" and path.exists() and not path.is_dir():
        return f"exists and is not a folder, so it cannot be the {noun}"
    return None


def _with_parents(paths) -> list[Path]:
    """Each path and all its parents, each once, in order."""
    seen: dict[Path, None] = {}
    for p in paths:
        for q in (p, *p.parents):
            seen.setdefault(q, None)
    return list(seen)
