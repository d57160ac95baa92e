"""How datasets lie on disk: a *dataset folder* holds version folders named ``v<N>`` (no
leading zeros), each with a ``manifest.json``. These checks only look at names and files; the
store reads and verifies what they find."""

from __future__ import annotations

import os
import re
from pathlib import Path

MANIFEST = "manifest.json"
_VERSION_RE = re.compile(r"^v([1-9]\d*)$")


def version_number(path: str | os.PathLike) -> int | None:
    """``N`` of a path named ``vN`` (no leading zeros), else None."""
    m = _VERSION_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_version(path: Path) -> bool:
    """Whether ``path`` is a version folder: named ``vN`` and holding a manifest."""
    return version_number(path) is not None and (path / MANIFEST).is_file()


def holds_versions(folder: Path) -> bool:
    """Whether ``folder`` is a dataset folder: it holds at least one version folder (an
    unreadable folder counts as none)."""
    try:
        with os.scandir(folder) as entries:
            return any(is_version(Path(e.path)) for e in entries if version_number(e.name) is not None)
    except OSError:
        return False
