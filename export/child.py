"""The ``stexport`` command runs each export in a child process, so that a crash in native code (a converter or a
runtime segfaulting, the kernel's out-of-memory killer) ends in a clear error instead of a bare "Segmentation
fault", and leaves no staging folder behind.

The child is ``python -m stexport.cli`` with the same arguments and `IN_PROCESS` set; it checks them and exports,
and its output goes straight to the terminal. The parent only parses the command line (no torch: 0.04 s). Set
``STEXPORT_IN_PROCESS=1`` yourself to run the export in the command's own process (for a debugger). The Python API
(`stexport.export`) always runs in the caller's process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from stexport.bundle import recover

#: set in the child's environment (and honoured when a user sets it): export in this process
IN_PROCESS = "STEXPORT_IN_PROCESS"

_NATIVE = "a crash in native code (a converter or runtime library, not stexport's Python)"
_CAUSES = {
    "SIGSEGV": _NATIVE,
    "SIGBUS": _NATIVE,
    "SIGFPE": _NATIVE,
    "SIGILL": "native code using an instruction this CPU lacks (a converter or runtime library)",
    "SIGABRT": "a native library aborting (a failed check inside a converter or runtime)",
    "SIGKILL": "usually the kernel's out-of-memory killer: the export needed more memory than was free "
               "(MoViNet A4/A5 exports need 10-15 GB)",
}
#: Windows ends a crashed process with an NTSTATUS exit code, not a signal: (what it is, the like POSIX signal)
_WINDOWS = {
    0xC0000005: ("access violation", "SIGSEGV"),
    0xC00000FD: ("stack overflow", "SIGSEGV"),
    0xC0000409: ("fail-fast exit", "SIGABRT"),
    0xC000001D: ("illegal instruction", "SIGILL"),
    0xC0000094: ("integer division by zero", "SIGFPE"),
    0xC0000017: ("out of memory", "SIGKILL"),
    0xC000013A: ("Ctrl-C", "SIGINT"),
}


def in_child() -> bool:
    """True when this process should export itself (it is the child, or the user asked for one process)."""
    return os.environ.get(IN_PROCESS, "") not in ("", "0")


def export_in_child(argv: Sequence[str], *, final: Path) -> int:
    """Run ``stexport <argv>`` in a child process and return its exit code. If the child dies of a signal, print
    what that usually means and remove what it left (its staging folder beside ``final``, where a bundle it had moved
    aside goes back; its int8 calibration samples), then return 1 (130 for an interrupt)."""
    return run_guarded([sys.executable, "-m", "stexport.cli", *argv], final=final)


def run_guarded(cmd: Sequence[str], *, final: Path) -> int:
    """Run ``cmd`` (an export writing ``final``) with stdio inherited; see `export_in_child`."""
    env = {**os.environ, IN_PROCESS: "1"}
    proc = subprocess.Popen(list(cmd), env=env)
    previous = signal.signal(signal.SIGTERM, lambda *_: proc.terminate())  # a terminated parent ends its child
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # the child got the same interrupt: let it clean up, then report
                continue
    finally:
        signal.signal(signal.SIGTERM, previous)
    killed = killed_by(code, windows=sys.platform == "win32")
    if killed is None:
        return code
    from stexport.calibration import remove_orphaned_stores  # (imports torch: only after a crash)

    recover(final, dead_pid=proc.pid)
    remove_orphaned_stores(dead_pid=proc.pid)  # int8 calibration samples: gigabytes for a stream model
    name, like = killed
    if like in ("SIGINT", "SIGTERM"):
        print(f"stexport: interrupted ({like}); no bundle was written", file=sys.stderr)
        return 130
    print(f"stexport: error: {crash_message(name, like)}", file=sys.stderr)
    print("stexport: no bundle was written", file=sys.stderr)
    return 1


def killed_by(code: int, *, windows: bool) -> tuple[str, str] | None:
    """What ended a child that exited with ``code``: (its name, the POSIX signal it is like), or None if the child
    exited by itself. POSIX: a negative code is the signal. Windows: a crash is an NTSTATUS code (`_WINDOWS`)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return name, name
    if windows and code in _WINDOWS:
        what, like = _WINDOWS[code]
        return f"status 0x{code:08X} ({what})", like
    return None


def crash_message(name: str, like: str) -> str:
    """One line on a child killed by ``name`` (a signal, or a Windows status like signal ``like``): its usual
    cause, and what to try."""
    cause = _CAUSES.get(like, "a crash outside Python")
    if like == "SIGKILL" and like != name:  # Windows: the process itself ran out of memory
        cause = "out of memory: the export needed more than was free (MoViNet A4/A5 exports need 10-15 GB)"
    hint = ("free memory (close other programs) or export a smaller variant" if like == "SIGKILL" else
            "--verbose shows the converter's own output up to the crash; another --target or --precision may "
            f"avoid it; run with {IN_PROCESS}=1 to debug it in one process")
    ended = "was killed by" if name == like else "ended with"
    return f"the export process {ended} {name} during the stage printed last above: {cause}. Try: {hint}"
