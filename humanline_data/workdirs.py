"""Hidden work folders that one ``humanline-data`` process owns while it lives: a version being
written (``<dataset>/.tmp-<uuid>``, see :mod:`humanline_data.store`) and the generate stage's
checkpoints (``<out>/.partial-<key>``, see :mod:`humanline_data.generate`).

Each is made with a marker file :data:`MARKER` (``.humanline-tmp``, JSON ``{"made_by":
"humanline-data", "purpose", "pid", "host", "created_at"}``) and held under an exclusive
``flock`` by the process working in it. The one rule for deleting: a work folder is removed
only when it carries that marker (so folders other programs made, or that merely share the
name pattern, are never touched) and its lock can be taken (so a live process keeps its folder;
the kernel drops the locks of killed processes). A file system without ``flock`` makes every
folder look owned, so nothing is removed there.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import os
import shutil
import socket
import stat
from pathlib import Path

from humanline_data.errors import HumanlineError, os_errors

MARKER = ".humanline-tmp"
MADE_BY = "humanline-data"
_MARKER_MAX_BYTES = 4096


def try_lock(fd: int, how: int) -> bool:
    """Take ``flock`` ``how`` on ``fd``; False when another process holds it (with LOCK_NB) or
    the file system has no such locks."""
    try:
        fcntl.flock(fd, how)
    except OSError:  # BlockingIOError: held elsewhere; EBADF/ENOLCK/EOPNOTSUPP: unsupported here
        return False
    return True


def make_folders(folder: Path) -> list[Path]:
    """``mkdir -p folder``; the folders it created, outermost first (to undo with
    :func:`remove_if_empty`). Raises OSError."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing[::-1]


def remove_if_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (outermost first, as :func:`make_folders` gives them), innermost first,
    stopping at the first that is not empty (or gone)."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return


class WorkFolder:
    """A marked work folder held (``flock``) by this process; :meth:`remove` or
    :meth:`release` it when done. ``made`` are the parent folders made for it."""

    def __init__(self, path: Path, fd: int, made: list[Path]) -> None:
        self.path, self._fd, self.made = path, fd, made

    @property
    def held(self) -> bool:
        return self._fd is not None

    def remove(self) -> None:
        """Delete the folder and then the parents made for it that are empty; nothing once
        released (the folder may be another process's by then)."""
        if not self.held:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        self._close()
        remove_if_empty(self.made)

    def release(self) -> None:
        """Let go of the folder (idempotent); one holding nothing but its marker is removed."""
        if not self.held:
            return
        try:
            with os.scandir(self.path) as entries:
                left = [e.name for e in entries]
        except OSError:
            left = None  # renamed away (a committed version) or gone
        if left == [MARKER]:
            self.remove()
        else:
            self._close()

    def unmark(self) -> None:
        """Delete the marker (before the folder is renamed into a version)."""
        with os_errors(self.path / MARKER, "cannot remove"):
            (self.path / MARKER).unlink(missing_ok=True)

    def _close(self) -> None:
        os.close(self._fd)
        self._fd = None


def create(path: Path, purpose: str) -> WorkFolder:
    """Make the work folder ``path`` (its parents too), lock it and mark it; raises a one-line
    HumanlineError (and leaves nothing) when that fails, e.g. on a full disk."""
    made = []
    try:
        with os_errors(path, f"cannot make a {purpose} work folder"):
            made = make_folders(path.parent)
            path.mkdir()
            made.append(path)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except HumanlineError:
        remove_if_empty(made)
        raise
    folder = WorkFolder(path, fd, made)
    try_lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        _write_marker(path, purpose)
    except BaseException:
        folder.remove()
        raise
    return folder


def claim(path: Path, purpose: str) -> WorkFolder:
    """The work folder ``path``, made (:func:`create`) or, when it exists, taken over from a
    dead process to resume its work. Raises one line when it exists but is not marked as ours
    or another live process holds it."""
    if not os.path.lexists(path):
        return create(path, purpose)
    if not is_marked(path):
        raise HumanlineError(
            f"{path}: exists but holds no {MARKER} marker, so humanline-data did not make it; move it away"
        )
    with os_errors(path, f"cannot open the {purpose} work folder"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    if not try_lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
        os.close(fd)
        raise HumanlineError(f"{path}: in use by another process ({owner(path)}); wait for it to finish")
    return WorkFolder(path, fd, [])


def is_marked(path: Path) -> bool:
    """Whether the folder ``path`` (not a link) carries a well-formed marker (a plain file)."""
    marker = Path(path) / MARKER
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return False
        info = os.lstat(marker)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MARKER_MAX_BYTES:
            return False
        fields = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(fields, dict) and fields.get("made_by") == MADE_BY and isinstance(fields.get("pid"), int)


def owner(path: Path) -> str:
    """Who made the marked folder ``path``, in words (``pid 12 on host h since ...``)."""
    try:
        fields = json.loads((Path(path) / MARKER).read_bytes())
        return f"pid {fields['pid']} on host {fields['host']} since {fields['created_at']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "owner unknown"


def remove_abandoned(path: Path) -> int | None:
    """Remove the work folder ``path`` if it is marked and no live process holds it; the bytes
    it held, or None when it is kept."""
    if not is_marked(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None  # vanished (its process finished) or became a link
    try:
        if not try_lock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB):
            return None
        size = _bytes_under(path)
        shutil.rmtree(path)
        return size
    finally:
        os.close(fd)


def _bytes_under(folder: Path) -> int:
    """Bytes of the plain files under ``folder`` (links not followed)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            info = os.lstat(os.path.join(root, name))
            total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def _write_marker(folder: Path, purpose: str) -> None:
    marker = folder / MARKER
    fields = {
        "made_by": MADE_BY,
        "purpose": purpose,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    with os_errors(marker):
        with open(marker, "x") as f:
            json.dump(fields, f)
            f.flush()
            os.fsync(f.fileno())
