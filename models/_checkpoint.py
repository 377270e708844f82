"""Strict loading of the authors' released checkpoints (``weights_only=True``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from ._registry import ModelEntry, StateDict


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not match the model; the message lists them."""


def _listing(what: str, items: list[str], limit: int = 8) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"  {len(items)} {what}: {', '.join(items[:limit])}{more}"


def unwrap(obj: object, *, nested: tuple[str, ...] = ("state_dict", "model"), strip: tuple[str, ...] = ("module.",)
           ) -> StateDict:
    """A flat key -> tensor dict from a loaded checkpoint: a plain state_dict, one under ``obj[nested[i]]``, or
    state_dicts of submodules (``{"a": sd_a, "b": sd_b}`` -> ``a.<key>``, ``b.<key>``, e.g. an ensemble's members);
    a leading ``strip`` prefix present on every key (DataParallel's ``module.``) is removed."""
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"checkpoint holds a {type(obj).__name__}, not a state_dict")
    sd: Mapping[str, object] = obj
    if not any(isinstance(v, torch.Tensor) for v in sd.values()):
        for key in nested:
            if isinstance(sd.get(key), Mapping):
                sd = sd[key]  # type: ignore[assignment]
                break
        else:
            parts = {k: unwrap(v, nested=nested, strip=strip) for k, v in sd.items() if isinstance(v, Mapping)
                     and any(isinstance(t, torch.Tensor) for t in v.values())}
            if parts and len(parts) == len(sd):
                return {f"{k}.{kk}": t for k, part in parts.items() for kk, t in part.items()}
            raise CheckpointMismatchError(f"checkpoint has no tensors; its top-level keys: {sorted(sd)[:10]}")
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    for prefix in strip:
        if tensors and all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, model_name: str,
                           source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model``; any missing, unexpected or mis-shaped key raises, listing them."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {list(state_dict[k].shape)} (model wants {list(own[k].shape)})"
              for k in own if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{source} does not match model {model_name!r} ({len(own)} keys expected, {len(state_dict)} given):"]
        if missing:
            lines.append(_listing("missing keys", missing))
        if unexpected:
            lines.append(_listing("unexpected keys", unexpected))
        if shapes:
            lines.append(_listing("shape mismatches", shapes))
        lines.append("  Pass the authors' released checkpoint for this exact variant (see `stexport --list`).")
        raise CheckpointMismatchError("\n".join(lines))
    model.load_state_dict(dict(state_dict), strict=True)


def load_checkpoint(model: torch.nn.Module, path: str | Path, entry: ModelEntry) -> None:
    """Load the released checkpoint at ``path`` (authors' layout) into ``model`` strictly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file, truncated, or a pickle that needs code to load
        # torch's own message advises an unsafe load; it is not repeated
        raise CheckpointMismatchError(
            f"{path.name} is not a weights-only PyTorch checkpoint (a torch.save file of tensors); pass the "
            "released file"
        ) from None
    load_state_dict_strict(model, entry.checkpoint_filter(unwrap(obj)), model_name=entry.name, source=path.name)
