"""The model registry: every model is one `ModelEntry` (data) pointing at a builder.

A family module registers its variants with a few lines each::

    register(ModelEntry(name="movinet_a0_stream", family="movinet", build=partial(MoViNet, cfg=A0, causal=True),
                        num_classes=600, labels="kinetics600.txt", num_frames=8, input_size=172,
                        streaming=True, preprocess=UNIT_RANGE, origin="Atze00/MoViNet-pytorch"))
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch

StateDict = dict[str, torch.Tensor]


class UnknownNameError(KeyError):
    """An unknown model or target name; the message lists the closest matches."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Known {kind}s: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """How an app turns camera frames into model input (recorded in every manifest).

    pixel = (rgb_uint8 / 255 * (value_range[1] - value_range[0]) + value_range[0] - mean) / std, per channel.
    """

    size: tuple[int, int]
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    resize: str = "shorter side, then center crop"
    #: resize the shorter side to this many pixels, then center-crop ``size``; None: shorter side to the crop size
    resize_shorter: int | None = None
    fps: float | None = None
    frame_stride: int = 1


def preprocess_for(entry: ModelEntry | None, size: tuple[int, int]) -> Preprocess:
    """The preprocessing of a model whose frames are ``size`` (``model.frame_size()``): the entry's, with the crop at
    that size when a model option such as ``input_size`` changed it (the shorter-side resize keeps its ratio to the
    crop); plain [0, 1] RGB without an entry."""
    if entry is None:
        return Preprocess(size=size)
    pre = entry.preprocess
    if tuple(pre.size) == tuple(size):
        return pre
    shorter = round(pre.resize_shorter * size[0] / pre.size[0]) if pre.resize_shorter else None
    return replace(pre, size=size, resize_shorter=shorter)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def identity_filter(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    return dict(state_dict)


@dataclass(frozen=True, kw_only=True)
class ModelEntry:
    """Everything the tool knows about one model variant.

    `build(num_classes=..., **overrides)` returns the module. `checkpoint_filter` maps the object loaded from
    the authors' released checkpoint (already unwrapped to a flat key -> tensor dict when it can be; see
    `stexport.models._checkpoint`) to this module's state_dict keys.
    `streaming=True`: a causal stream model (native `step`); False: a clip model whose `step` is a ring buffer
    of the last `num_frames` frames (every step costs a full clip).
    """

    name: str
    family: str
    build: Callable[..., torch.nn.Module]
    num_classes: int
    labels: str
    num_frames: int
    input_size: int
    streaming: bool
    preprocess: Preprocess
    origin: str
    dataset: str
    checkpoint_filter: Callable[[Mapping[str, torch.Tensor]], StateDict] = identity_filter
    description: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    #: a checkpoint shipped inside the package (file name under ``stexport/models/weights/``), loaded by
    #: `create_model` when no ``checkpoint`` is given; in this entry's own state_dict layout
    weights: str | None = None
    #: measured accuracy, e.g. {"top1": 0.93, "dataset": "...", "source": "..."} (benchmarks plot it)
    accuracy: Mapping[str, Any] | None = None


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _REGISTRY[entry.name] = entry
    return entry


def entries() -> dict[str, ModelEntry]:
    return dict(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("model", name, sorted(_REGISTRY)) from None
