"""``stexport.models``: faithful PyTorch definitions of the supported video models and their registry.

Every public module in this package (name without a leading underscore) is a model family that registers its
variants on import; the registry is filled by importing this package.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Mapping
from pathlib import Path

import torch

from ._base import ClipModel, State, StreamModel, VideoModel, pack_clip, unpack_clip
from ._checkpoint import CheckpointMismatchError, load_checkpoint, load_state_dict_strict
from ._registry import ModelEntry, Preprocess, UnknownNameError, entries, get_entry, preprocess_for, register

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
importlib.import_module("stexport.motion7.models")  # the two models trained here on motion7 register too


def check_options(name: str, options: Mapping[str, object]) -> None:
    """Raise ValueError naming the options of model ``name`` if ``options`` has a key it does not take."""
    params = inspect.signature(get_entry(name).build).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    known = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"model {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
                         f"{', '.join(known)}")


def create_model(name: str, *, checkpoint: str | Path | None = None, num_classes: int | None = None,
                 **overrides: object) -> VideoModel:
    """Build registered model ``name`` in eval mode, optionally loading the authors' released ``checkpoint``."""
    entry = get_entry(name)
    kwargs = {**entry.defaults, **overrides, "num_classes": num_classes or entry.num_classes}
    check_options(name, overrides)
    model = entry.build(**kwargs)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, entry)
    elif entry.weights is not None:
        shipped = Path(__file__).resolve().parent / "weights" / entry.weights
        load_state_dict_strict(model, torch.load(shipped, map_location="cpu", weights_only=True),
                               model_name=name, source=f"shipped weights {entry.weights}")
    model.eval()
    model.registry_name = name  # type: ignore[assignment]
    return model  # type: ignore[return-value]


__all__ = [
    "CheckpointMismatchError", "ClipModel", "ModelEntry", "Preprocess", "State", "StreamModel", "UnknownNameError",
    "VideoModel", "check_options", "create_model", "entries", "get_entry", "load_checkpoint", "load_state_dict_strict",
    "pack_clip", "preprocess_for", "register", "unpack_clip",
]
