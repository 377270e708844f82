"""Keep converter chatter (C++ logs, progress bars, warnings) out of the terminal unless something fails."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def captured_output(*, enabled: bool = True, tail_lines: int = 40) -> Iterator[None]:
    """Redirect file descriptors 1 and 2 (so native libraries are caught too), and ``sys.stdout`` / ``sys.stderr``
    (which may not write to them, e.g. under pytest's capture), to a temporary file; on an exception, print the last
    ``tail_lines`` lines of what was captured to stderr, then re-raise."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as log, warnings.catch_warnings(), \
            open(log.fileno(), "w", closefd=False) as text:
        warnings.simplefilter("ignore")
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        failed = False
        try:
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield
        except BaseException:
            failed = True
            raise
        finally:
            text.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            if failed:
                log.seek(0)
                lines = log.read().decode("utf-8", "replace").splitlines()[-tail_lines:]
                if lines:
                    print("---- converter output (last lines) ----", file=sys.stderr)
                    print("\n".join(lines), file=sys.stderr)
