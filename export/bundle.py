"""Atomic bundle writes: everything goes into a hidden staging folder that is renamed into place only when complete.

A failed export (converter error, failed parity gate, interrupt) removes the staging folder, so
``<out>/<model>/<target>/`` is either a complete bundle or what was there before.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged_bundle(final: Path) -> Iterator[Path]:
    """Yield a staging folder beside ``final``; on success replace ``final`` with it, on failure delete it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield staging
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
