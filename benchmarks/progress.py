"""A progress bar on stderr: tqdm when installed, else a plain one-line bar; messages go above it."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    def __init__(self, total: int, desc: str, *, enabled: bool = True) -> None:
        self.total, self.desc, self.enabled, self.n = max(total, 1), desc, enabled, 0
        self._bar: Any = None
        self._last = 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, file=sys.stderr, unit="step", dynamic_ncols=True,
                             leave=True, mininterval=0.5)
        except ImportError:
            self._draw(force=True)

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        frac = min(self.n / self.total, 1.0)
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r{self.desc[:40]:<40} [{bar:<30}] {100 * frac:5.1f}%")
        sys.stderr.flush()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.enabled:
            self._draw()

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)
        elif self.enabled:
            self._draw(force=True)

    def write(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            sys.stderr.write("\r" + " " * 80 + "\r" + message + "\n")
            self._draw(force=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.update(max(0, self.total - self._bar.n))
            self._bar.close()
        elif self.enabled:
            self.n = self.total
            self._draw(force=True)
            sys.stderr.write("\n")
