"""Run a test function on a small, real file system: a tmpfs mounted in a child process's own
mount namespace (``unshare``), so a full disk (ENOSPC) can be met at any point of a write."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHILD = """
import importlib.util, json, subprocess, sys
from pathlib import Path
module_file, mount, size, function, *args = sys.argv[1:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=" + size, "tmpfs", mount], check=True)
spec = importlib.util.spec_from_file_location(Path(module_file).stem, module_file)
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
print(json.dumps(getattr(module, function)(Path(mount), *args)))
"""


def on_small_fs(tmp_path: Path, size: str, module_file: str, function: str, *args: str):
    """``function(mount, *args)`` of the test module ``module_file``, run in a child process in
    its own mount namespace with a tmpfs of ``size`` mounted at ``mount``; its JSON result.
    Skips where no private tmpfs can be mounted."""
    mount = tmp_path / "small"
    mount.mkdir()
    unshare = [shutil.which("unshare") or "unshare", "-m" if os.geteuid() == 0 else "-rm"]
    probe = subprocess.run([*unshare, "mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mount)],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a private tmpfs to fill (unshare/mount: {probe.stderr.strip()[:200]})")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([*unshare, sys.executable, "-c", CHILD, module_file, str(mount), size, function, *args],
                           capture_output=True, text=True, env=env)
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.strip().splitlines()[-1])


def fill_to(mount: Path, free_pages: int) -> None:
    """Leave ``free_pages`` pages (4 KiB) free on the file system at ``mount``."""
    (mount / "filler").unlink(missing_ok=True)
    stat = os.statvfs(mount)
    free = stat.f_bavail * stat.f_frsize - free_pages * 4096
    if free > 0:
        fd = os.open(mount / "filler", os.O_CREAT | os.O_WRONLY)
        os.posix_fallocate(fd, 0, free)
        os.close(fd)
