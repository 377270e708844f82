"""Errors the CLI turns into clear messages (no traceback)."""

from __future__ import annotations


class StexportError(RuntimeError):
    """A user-facing failure; the message says what to do."""


class MissingExtraError(StexportError):
    """A target's converter or runtime is not installed."""

    def __init__(self, target: str, extra: str, missing: str) -> None:
        super().__init__(f"target {target!r} needs {missing}, which is not installed. "
                         f"Install it with: pip install 'stexport[{extra}]'")


class ParityError(StexportError):
    """The exported artifact does not reproduce PyTorch within the gate's tolerance."""


class UnsupportedPrecisionError(StexportError):
    """The target does not offer the requested precision (the message lists the ones it does)."""


class UnsupportedModelError(StexportError):
    """The target cannot express this model (the message names the targets or variants that can)."""


class BundleError(StexportError):
    """A bundle folder that cannot be used: no manifest, a missing file, or an artifact whose sha256 differs from the
    one the manifest records (a truncated or modified copy)."""


class InputError(StexportError):
    """A tensor fed to a stream does not match the manifest (name, shape, dtype) or is not finite; the stream's
    state is left as it was."""


def refuse_passed_through(passed: dict[str, str], why: str) -> None:
    """Raise `UnsupportedModelError` if an artifact returns a state input as a state output (``passed``: output name
    -> input name): the step returned that state unchanged, and ``why`` says how the runtime gets it wrong."""
    if passed:
        pairs = ", ".join(f"{o} is input {i}" for o, i in passed.items())
        raise UnsupportedModelError(
            f"the step returns state input(s) unchanged ({pairs}): {why}. Compute each state in the step, or drop a "
            "state that never changes")
