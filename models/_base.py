"""What every model in the registry looks like from the outside.

* Every model: ``model(clip)`` with ``clip`` float32 ``[N, 3, T, H, W]`` RGB -> logits ``[N, K]``.
  A model may run on a packed 4D layout internally (``clip_layout``, e.g. ``"N(C*T)HW"``); ``forward_packed``
  takes that layout and is what a clip export traces, so no 5D tensor reaches the exported graph.
* Every model: ``init_state(batch_size) -> dict[str, Tensor]`` (zeros) and
  ``step(frame [N, 3, H, W], state) -> (logits [N, K], new_state)``. State is an argument and a return value,
  never a module attribute; ``step`` never mutates the tensors it is given.
  Causal stream models (`StreamModel`) implement ``step`` natively. Clip models (`ClipModel`) get it from a
  ring buffer of the last T frames in their packed layout (every step costs one full clip).
* Every model: ``refold()`` rebuilds whatever the model caches from its parameters (a step on BatchNorm-folded
  weights: MoViNet stream, online TSM; a no-op elsewhere); ``with_step_layout("nhwc" | "nchw")`` gives the model
  (or a copy with the same weights) whose ``step`` runs its 4D tensors channels-last or channels-first (a no-op
  where ``step`` has no layout choice); ``state_layouts()`` names the axes of each state for the manifest.
"""

from __future__ import annotations

from typing import ClassVar, Self

import torch
from torch import Tensor, nn

State = dict[str, Tensor]

# packed 4D clip layouts: name -> (NCTHW -> packed)
LAYOUTS = ("NCTHW", "N(C*T)HW", "N(T*C)HW")


def pack_clip(clip: Tensor, layout: str) -> Tensor:
    """NCTHW ``[N, C, T, H, W]`` -> ``layout``. ``N(C*T)HW``: channel c*T+t; ``N(T*C)HW``: channel t*C+c."""
    n, c, t, h, w = clip.shape
    if layout == "NCTHW":
        return clip
    if layout == "N(C*T)HW":
        return clip.reshape(n, c * t, h, w)
    if layout == "N(T*C)HW":
        return clip.transpose(1, 2).reshape(n, t * c, h, w)
    raise ValueError(f"unknown clip layout {layout!r}; known: {LAYOUTS}")


def unpack_clip(x: Tensor, layout: str, *, channels: int = 3) -> Tensor:
    """Inverse of `pack_clip`: packed ``layout`` -> NCTHW."""
    if layout == "NCTHW":
        return x
    n, ct, h, w = x.shape
    t = ct // channels
    if layout == "N(C*T)HW":
        return x.reshape(n, channels, t, h, w)
    if layout == "N(T*C)HW":
        return x.reshape(n, t, channels, h, w).transpose(1, 2)
    raise ValueError(f"unknown clip layout {layout!r}; known: {LAYOUTS}")


class VideoModel(nn.Module):
    """Base of every registered model. Subclasses set ``num_frames``, ``input_size``, ``num_classes``."""

    clip_layout: ClassVar[str] = "NCTHW"
    streaming: ClassVar[bool] = False
    #: outputs of the clip export; extra ones (e.g. TSM's per-segment logits) come from `forward_packed_outputs`
    clip_outputs: ClassVar[tuple[str, ...]] = ("logits",)
    num_frames: int
    input_size: int
    num_classes: int

    def forward_packed(self, x: Tensor) -> Tensor:
        """Logits ``[N, K]`` from the clip in ``clip_layout``."""
        raise NotImplementedError

    def forward_packed_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """Every clip-export output (``clip_outputs``) from the packed clip; by default just the logits."""
        return {"logits": self.forward_packed(x)}

    def forward(self, clip: Tensor) -> Tensor:
        """``clip`` float32 ``[N, 3, T, H, W]`` -> logits ``[N, K]``."""
        if clip.dim() != 5 or clip.shape[1] != 3:
            raise ValueError(f"expected a clip [N, 3, T, H, W], got {list(clip.shape)}")
        return self.forward_packed(pack_clip(clip, self.clip_layout))

    def init_state(self, batch_size: int = 1) -> State:
        raise NotImplementedError

    def step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        raise NotImplementedError

    def refold(self) -> None:
        """Rebuild every tensor the model derives from its parameters (e.g. BatchNorm folded into ``step``'s conv
        weights) from their current values. The exporter calls it after loading weights; models that cache nothing
        inherit this no-op."""

    def with_step_layout(self, name: str, *, integer: bool = False) -> Self:
        """The model whose ``step`` keeps the channels of its 4D tensors where ``name`` says: ``"nhwc"``
        (``[N, H, W, C]``, LiteRT's layout) or ``"nchw"`` (``[N, C, H, W]``), written with op forms that integer
        kernels run if ``integer`` (full-int8 exports); ``self`` if it already is, else a copy with the same weights
        (its state shapes follow the layout; the frame stays ``[N, 3, H, W]``). The exporter asks for the target's
        `Target.step_layout`. Default: ``step`` has no such choice, so ``self`` for either name."""
        if name not in ("nhwc", "nchw"):
            raise ValueError(f"step layout must be 'nhwc' or 'nchw', got {name!r}")
        return self

    def state_layouts(self) -> dict[str, str]:
        """Axis names of each state for the manifest, ``{state name: layout}`` (e.g. ``{"shift_0": "NHWC"}``); a state
        left out gets the default for its rank (``"NCHW"`` truncated). Default: every state left out."""
        return {}

    def frame_size(self) -> tuple[int, int]:
        return (self.input_size, self.input_size)

    def state_kinds(self) -> dict[str, str]:
        """What each state is, for quantized exports: ``"buffer"`` (a delayed copy of an activation or of the
        input, carried in that tensor's quantization) or ``"accumulator"`` (running means, counters: kept float).
        A state not named here is an accumulator."""
        return {}

    def check_frame(self, frame: Tensor) -> None:
        """Raise a clear error for a frame that is not ``[N, 3, H, W]`` of the model's dtype (float32 as built)."""
        if frame.dim() != 4 or frame.shape[1] != 3:
            raise ValueError(f"expected a frame [N, 3, H, W] (RGB, NCHW), got shape {list(frame.shape)}")
        want = next(self.parameters()).dtype
        if frame.dtype != want:
            raise TypeError(f"expected a {want} frame, got {frame.dtype}; convert with frame.to({want}) "
                            "after the preprocessing in the manifest")


class StreamModel(VideoModel):
    """A causal model: ``step`` carries its temporal memory in ``state`` (at most 4D tensors)."""

    streaming: ClassVar[bool] = True


class ClipModel(VideoModel):
    """A clip model; ``step`` keeps a ring buffer of the last T frames (state ``frames``, packed 4D layout).

    Until T frames have arrived the window is zero-padded at the front (zero-init state, as every state).
    """

    clip_layout: ClassVar[str] = "N(T*C)HW"

    def init_state(self, batch_size: int = 1) -> State:
        h, w = self.frame_size()
        return {"frames": torch.zeros(batch_size, 3 * self.num_frames, h, w)}

    def state_kinds(self) -> dict[str, str]:
        return {"frames": "buffer"}

    def push_frame(self, buf: Tensor, frame: Tensor) -> Tensor:
        """Drop the oldest frame from the packed buffer ``[N, 3*T, H, W]`` and append ``frame`` ``[N, 3, H, W]``."""
        t = self.num_frames
        if self.clip_layout == "N(T*C)HW":
            return torch.cat([buf[:, 3:], frame], dim=1)
        if self.clip_layout == "N(C*T)HW":
            parts = []
            for c in range(3):
                parts += [buf[:, c * t + 1:(c + 1) * t], frame[:, c:c + 1]]
            return torch.cat(parts, dim=1)
        raise ValueError(f"no ring buffer for clip layout {self.clip_layout!r}")

    def step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        """``frame`` ``[N, 3, H, W]`` -> logits of the window ending at this frame, and the new buffer."""
        buf = self.push_frame(state["frames"], frame)
        return self.forward_packed(buf), {"frames": buf}
