"""The temporal shift of TSM (Lin, Gan, Han, ICCV 2019) as export-safe tensor ops, and the one mechanism that lifts
the online (uni-directional) shift into explicit stream state.

A *shift site* (`TemporalShift`) sits where the authors put one: on the input of the first convolution of a
residual branch ("blockres"). What a site does is decided per call by the `ShiftIO` its owning model passes down
explicitly (no module attribute changes, no hidden state):

* ``ShiftIO.clip(T, bidirectional=True)``: offline TSM on frames ``[N*T, C, H, W]`` (frame-major batch). With
  ``fold = C // fold_div``: channels ``[0, fold)`` of segment t take segment t+1's (zeros at the last segment),
  channels ``[fold, 2*fold)`` take segment t-1's (zeros at the first), the rest stay
  (``ops/temporal_shift.py``: "shift left" / "shift right").
* ``ShiftIO.clip(T, bidirectional=False)``: online TSM over a whole clip: channels ``[0, fold)`` of frame t take
  frame t-1's (zeros at frame 0), the rest stay. Causal; equal to stepping frame by frame.
* ``ShiftIO.stream(buffers)``: one frame ``[N, C, H, W]``: channels ``[0, fold)`` are replaced by the site's
  buffer (the previous frame's first ``fold`` channels) and the current frame's first ``fold`` channels become the
  site's next buffer (``online_demo/mobilenet_v2_tsm.py``, ``InvertedResidualWithShift``). With
  ``channel_axis=3`` the same on channels-last frames ``[N, H, W, C]`` and buffers ``[N, H, W, fold]``.

Every shift is slicing + zero padding (`F.pad`) + concatenation on at most 4D tensors. The authors' offline
version writes into ``torch.zeros_like(x)`` by slice assignment, which exporters trace as a constant
(temporal-shift-module issue 103); nothing here assigns in place.

State lifting (`shift_sites`, `init_shift_state`, `step_with_shift_state`) is generic: any module whose forward
threads a `ShiftIO` to its `TemporalShift` sites becomes a stream model with one state tensor per site,
``shift_0``, ``shift_1``, ... in module order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ShiftMode = Literal["bidirectional", "unidirectional", "stream"]


def shift_bidirectional(x: Tensor, *, n_segment: int, fold_div: int) -> Tensor:
    """Offline TSM shift of ``x`` ``[N*T, C, H, W]`` (frame-major) with ``T = n_segment``; same shape out."""
    nt, c, h, w = x.shape
    fold = c // fold_div
    v = x.reshape(nt // n_segment, n_segment, c, h * w)
    future = F.pad(v[:, 1:, :fold], (0, 0, 0, 0, 0, 1))  # segment t <- t+1, zeros at the last segment
    past = F.pad(v[:, :-1, fold:2 * fold], (0, 0, 0, 0, 1, 0))  # segment t <- t-1, zeros at the first
    return torch.cat([future, past, v[:, :, 2 * fold:]], dim=2).reshape(nt, c, h, w)


def shift_unidirectional(x: Tensor, *, n_segment: int, fold_div: int) -> Tensor:
    """Online TSM shift over a clip ``x`` ``[N*T, C, H, W]``: channels ``[0, C//fold_div)`` from frame t-1."""
    nt, c, h, w = x.shape
    fold = c // fold_div
    v = x.reshape(nt // n_segment, n_segment, c, h * w)
    past = F.pad(v[:, :-1, :fold], (0, 0, 0, 0, 1, 0))  # frame t <- t-1, zeros at frame 0
    return torch.cat([past, v[:, :, fold:]], dim=2).reshape(nt, c, h, w)


def shift_stream(x: Tensor, buffer: Tensor, *, fold_div: int, channel_axis: int = 1) -> tuple[Tensor, Tensor]:
    """One frame ``x`` ``[N, C, H, W]`` and the previous frame's ``buffer`` ``[N, C//fold_div, H, W]`` ->
    (shifted input, next buffer = a copy of ``x[:, :C//fold_div]``). ``channel_axis=3``: ``x`` ``[N, H, W, C]``,
    ``buffer`` ``[N, H, W, C//fold_div]``."""
    fold = x.shape[channel_axis] // fold_div
    rest = x.narrow(channel_axis, fold, x.shape[channel_axis] - fold)
    return torch.cat([buffer, rest], dim=channel_axis), x.narrow(channel_axis, 0, fold).clone()


@dataclass(eq=False)
class ShiftIO:
    """What the shift sites do during one forward call (passed down explicitly; see the module docstring)."""

    mode: ShiftMode
    n_segment: int = 1
    buffers: Mapping[nn.Module, Tensor] = field(default_factory=dict)
    next_buffers: dict[nn.Module, Tensor] = field(default_factory=dict)
    channel_axis: int = 1  # stream mode: 1 for NCHW frames, 3 for channels-last NHWC

    @classmethod
    def clip(cls, n_segment: int, *, bidirectional: bool) -> ShiftIO:
        return cls("bidirectional" if bidirectional else "unidirectional", n_segment)

    @classmethod
    def stream(cls, buffers: Mapping[nn.Module, Tensor], *, channel_axis: int = 1) -> ShiftIO:
        return cls("stream", 1, buffers, channel_axis=channel_axis)

    def shift(self, site: TemporalShift, x: Tensor) -> Tensor:
        if self.mode == "bidirectional":
            return shift_bidirectional(x, n_segment=self.n_segment, fold_div=site.fold_div)
        if self.mode == "unidirectional":
            return shift_unidirectional(x, n_segment=self.n_segment, fold_div=site.fold_div)
        shifted, self.next_buffers[site] = shift_stream(x, self.buffers[site], fold_div=site.fold_div,
                                                        channel_axis=self.channel_axis)
        return shifted


class ShiftAware(nn.Module):
    """A layer whose forward takes ``(x, io: ShiftIO)`` because it holds (or is) a shift site."""


def run_layers(layers: Sequence[nn.Module] | nn.Sequential, x: Tensor, io: ShiftIO) -> Tensor:
    """Apply ``layers`` in order, passing ``io`` to the `ShiftAware` ones."""
    for layer in layers:
        x = layer(x, io) if isinstance(layer, ShiftAware) else layer(x)
    return x


class TemporalShift(ShiftAware):
    """A shift site: shift the input (as ``io`` says), then apply ``net``.

    With ``net`` given the keys read ``<site>.net.*`` as the authors' ``TemporalShift`` wrapper (TSN checkpoints);
    without, the site has no parameters (the online demo applies the shift inside the block).
    ``channels`` (input channels) and ``halvings`` (stride-2 reductions before the site) size the stream buffer.
    """

    def __init__(self, net: nn.Module | None = None, *, channels: int, halvings: int, fold_div: int = 8) -> None:
        super().__init__()
        self.net = net if net is not None else nn.Identity()
        self.channels, self.halvings, self.fold_div = channels, halvings, fold_div

    def forward(self, x: Tensor, io: ShiftIO) -> Tensor:
        return self.net(io.shift(self, x))

    def buffer_shape(self, batch_size: int, frame_hw: tuple[int, int], *, channels_last: bool = False
                     ) -> tuple[int, int, int, int]:
        """``[N, C//fold_div, H', W']`` (``channels_last``: ``[N, H', W', C//fold_div]``) with H', W' the site's
        feature size for frames of ``frame_hw``."""
        h, w = frame_hw
        for _ in range(self.halvings):  # every stride-2 layer of these nets maps s -> ceil(s / 2)
            h, w = (h + 1) // 2, (w + 1) // 2
        fold = self.channels // self.fold_div
        return (batch_size, h, w, fold) if channels_last else (batch_size, fold, h, w)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, fold_div={self.fold_div}, halvings={self.halvings}"


# ---- state lifting: the generic mechanism used by every online TSM model ----

def shift_sites(module: nn.Module) -> list[tuple[str, TemporalShift]]:
    """The state name (``shift_<i>``) and site of every `TemporalShift` in ``module``, in module order."""
    sites = [m for m in module.modules() if isinstance(m, TemporalShift)]
    return [(f"shift_{i}", s) for i, s in enumerate(sites)]


def init_shift_state(module: nn.Module, *, batch_size: int, frame_hw: tuple[int, int],
                     channels_last: bool = False, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Zero buffers ``{shift_i: [N, C_i//fold_div, H_i, W_i]}`` (``channels_last``: ``[N, H_i, W_i, C_i//fold_div]``)
    for every site of ``module`` (= frame 0)."""
    return {name: torch.zeros(site.buffer_shape(batch_size, frame_hw, channels_last=channels_last), dtype=dtype)
            for name, site in shift_sites(module)}


def step_with_shift_state(module: nn.Module, run: Callable[[Tensor, ShiftIO], Tensor], frame: Tensor,
                          state: Mapping[str, Tensor], *, channel_axis: int = 1) -> tuple[Tensor, dict[str, Tensor]]:
    """One causal step: ``run(frame, io)`` with every site of ``module`` reading its buffer from ``state``
    (channels on ``channel_axis`` of the frame and buffers); returns the output and the new buffers (fresh
    tensors; ``state`` is not modified)."""
    sites = shift_sites(module)
    missing = [name for name, _ in sites if name not in state]
    if missing:
        raise KeyError(f"state lacks shift buffers {missing}; start from model.init_state()")
    io = ShiftIO.stream({site: state[name] for name, site in sites}, channel_axis=channel_axis)
    out = run(frame, io)
    return out, {name: io.next_buffers[site] for name, site in sites}
