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
