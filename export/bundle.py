"""Atomic bundle writes: everything goes into a hidden staging folder that is renamed into place only when complete.

A failed export (converter error, failed parity gate, interrupt) removes the staging folder, so
``<out>/<model>/<target>/`` is either a complete bundle or what was there before. An export killed outright
(SIGKILL, power loss) cannot clean up: its hidden folders carry its process id, and the next export to the same
place deletes them once that process is gone (and they have been idle for an hour), first putting back the bundle
it was replacing if it died between moving that one aside and moving the new one in.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_bundle(final: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``final``; on success replace ``final`` with it, on failure delete it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    recover(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-", dir=final.parent))
    try:
        yield staging
        _usual_permissions(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _usual_permissions(folder: Path) -> None:
    """Give ``folder`` and all in it the permissions of anything made here (under umask 022: folders 0755, files
    0644): the staging folder is private (``tempfile.mkdtemp``'s 0700, which the rename kept), and so are some files
    converters write (coremltools' ``model.mlmodel``, 0600); a bundle is copied into apps and served to browsers."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def recover(final: Path, *, dead_pid: int | None = None) -> None:
    """Clean up after exports to ``final`` that were killed before they could: a bundle moved aside and not
    replaced goes back to ``final``; their staging folders and other set-aside bundles are deleted. Only `abandoned`
    folders are touched, and those of ``dead_pid`` (a child export known to have died) at once."""
    for old in sorted(final.parent.glob(f".{final.name}.old-*")):
        if _orphaned(old, dead_pid):
            if final.exists():
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(old, final)
    for part in final.parent.glob(f".{final.name}.partial-*"):
        if _orphaned(part, dead_pid):
            shutil.rmtree(part, ignore_errors=True)


def _orphaned(path: Path, dead_pid: int | None = None) -> bool:
    """``path`` (``.<name>.partial-<pid>-...`` or ``.<name>.old-<pid>``) was left by a killed export."""
    m = re.search(r"\.(?:partial|old)-(\d+)", path.name)
    return m is not None and abandoned(path, int(m.group(1)), dead_pid=dead_pid)


#: a folder untouched for this long (seconds) whose process is gone counts as abandoned
IDLE_SECONDS = 3600.0


def abandoned(folder: Path, pid: int, *, dead_pid: int | None = None) -> bool:
    """``folder``, made by process ``pid``, was left behind: ``pid`` is ``dead_pid`` (a child export known to have
    died), or no process ``pid`` runs here and nothing in the folder changed for `IDLE_SECONDS` (a process id seen
    from another PID namespace sharing the folder, a container's, looks gone: the idle time keeps a running export's
    folder safe). False whenever that cannot be told (another user's process, or Windows, where ``os.kill`` would
    terminate it), and for this process."""
    if pid == dead_pid:
        return True
    if pid == os.getpid() or os.name == "nt":
        return False
    try:
        os.kill(pid, 0)
        return False  # it runs
    except ProcessLookupError:
        pass
    except OSError:
        return False
    try:
        last = max(p.stat().st_mtime for p in [folder, *folder.rglob("*")])
    except OSError:  # removed meanwhile
        return False
    return time.time() - last > IDLE_SECONDS
