"""stexport: export efficient video-recognition models from PyTorch to ONNX, TFLite, Core ML and ExecuTorch.

The public API (torch and every converter load lazily, on first use)::

    list_models(pattern=None) -> list[str]
    create_model(name, *, checkpoint=None, num_classes=None, **overrides) -> torch.nn.Module
    export(model, *, target, out="out", precision="fp32", checkpoint=None, verify=True) -> pathlib.Path
    open_stream(bundle, *, threads=1) -> CheckedStream   # .step({"frame": x}) -> logits, state kept in the runtime
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted; ``pattern`` is a shell glob (``"movinet_*_stream"``) or a substring."""
    from stexport.models import entries

    names = sorted(entries())
    if pattern is None:
        return names
    glob = pattern if any(ch in pattern for ch in "*?[") else f"*{pattern}*"
    return [n for n in names if fnmatch.fnmatchcase(n, glob)]


def create_model(name: str, *, checkpoint: str | Path | None = None, num_classes: int | None = None,
                 **overrides: Any) -> nn.Module:
    """Model ``name`` in eval mode; ``checkpoint`` is the authors' released file in its original layout (strict)."""
    from stexport.models import create_model as _create

    return _create(name, checkpoint=checkpoint, num_classes=num_classes, **overrides)


def export(model: str | nn.Module, *, target: str, out: str | Path = "out", precision: str = "fp32",
           checkpoint: str | Path | None = None, verify: bool = True, **options: Any) -> Path:
    """Export ``model`` (a registered name or a module from `create_model`) to ``target``; returns the bundle folder
    ``<out>/<model>/<target>/`` after the parity gate passed (or was skipped with ``verify=False``). Options:
    see `stexport.pipeline.export` (``precision``, ``calibration``, ``io="int8"`` for the integer boundary, ...)."""
    from stexport.pipeline import export as _export

    return _export(model, target=target, out=out, precision=precision, checkpoint=checkpoint, verify=verify,
                   **options)


def open_stream(bundle: str | Path, *, threads: int = 1) -> Any:
    """An exported stream bundle in its runtime at zero state: ``.step({"frame": x}) -> logits`` with ``x`` the
    preprocessed float32 ``[N, 3, H, W]`` frame (the manifest's preprocessing), or for an integer boundary
    (``--io int8``) the uint8 RGB ``[1, H, W, 3]`` frame as it is; the state stays in the runtime's own buffers
    between steps (`stexport.streaming`), ``.state()`` reads it and ``.reset()`` returns it to its init (zeros; an
    int8 state's zero point).

    The artifact's sha256 must match the manifest's (else `stexport.errors.BundleError`, naming the file), and every
    feed is checked against the manifest (names, shape, dtype, finite values; else `stexport.errors.InputError`,
    the state unchanged)."""
    from stexport.streaming import open_stream as _open

    return _open(bundle, threads=threads)


__all__ = ["__version__", "create_model", "export", "list_models", "open_stream"]
