"""MoViNet A0-A5 (Kondratyuk et al., "MoViNets: Mobile Video Networks for Efficient Video Recognition", CVPR 2021),
as ported to PyTorch by Atze00/MoViNet-pytorch (weights converted from TF-Hub kinetics-600 classification/3).

Registered models (variants are data: ``_movinet_config.SPECS``):

* ``movinet_a{0..5}``: base models (Conv3d, non-causal, swish, sigmoid SE gate). Clip models: ``forward(clip)``
  on ``[N, 3, T, H, W]``; ``step`` is a ring buffer of the last ``num_frames`` frames (state ``frames``
  ``[N, 3*T, H, W]``, frame-major) and every step recomputes a full clip.
* ``movinet_a{0..5}_stream``: causal (2+1)D stream models (hard-swish, the port's hard sigmoid SE gate, causal SE
  with cumulative pooling and no positional encoding, exactly as the port). ``forward(clip)`` is the causal clip
  (its last frame's logits; ``clip_logits`` gives every frame's); ``step(frame, state)`` is 4D-only and gives the
  same logits frame by frame. ``forward`` runs ``step``'s layers on all T frames at once (``clip_layout``
  ``"N(T*C)HW"``), so the clip export is 4D too; ``clip_logits``/``features`` are the port-shaped 5D reference.
  The port released stream weights for A0-A2 only; A3-A5 stream are the same causal architecture (TF's A3-A5
  stream checkpoints add a positional encoding to the SE, which the port, and therefore this module, does not
  have).
* ``movinet_a0_stream_ensemble``: the paper's temporal ensemble of two stream models of the same architecture
  (see `MoViNetEnsemble`).

Checkpoints: the port's released state_dicts load as they are (``weights/modelA{0..5}_statedict_v3`` for base,
``weights/modelA{0,1,2}_stream_statedict_v3`` for stream); the keys of these modules are the port's keys.

Stream state (all float32, batch first; ``H_l, W_l`` = the block's output size for the entry's ``input_size``):

* ``frame_count [N, 1]``: frames seen, shared by every cumulative pool; saturates at ``pool_window`` if set.
* ``b{i}_l{j}_deep_buf [N, (kt-1)*H_l, W_l, C]`` (step layout ``"nhwc"``, the default; ``[N, C, (kt-1)*H_l, W_l]``
  for ``"nchw"``) for blocks with a temporal kernel ``kt > 1``: the last ``kt - 1`` frames entering the causal
  temporal conv, stacked along height, oldest first (the port's ``deep.activation`` ``[N, C, kt-1, H, W]``).
* ``b{i}_l{j}_se_mean [N, C]``: running mean of the block's per-frame spatial means (the port's
  ``se.temporal_cumualtive_GAvg3D`` cumulative *sum* divided by the count).
* ``head_mean [N, C_head]``: running mean of the pooled features (the port's ``cgap``).

Cumulative pools keep a running mean, ``mean += (x - mean) / count``, so the state stays bounded for any video
length (float32 counts are exact up to 2**24 frames, 6.5 days at 30 fps; past that the count stops growing, i.e. an
EMA with that horizon). ``pool_window=W`` (create_model override, ``model.pool_window``) saturates the count at W:
identical for the first W frames, an exponential moving average with horizon W afterwards (the clip forward
implements the same recurrence).

``step`` runs on folded weights (eval-mode BatchNorm, ReZero ``alpha`` and the hard-sigmoid affine folded into the
convs; non-persistent ``fused_*`` buffers rebuilt after ``load_state_dict``, ``.to()/.double()``, and before an eager
step whenever a parameter changed in place). It uses 4D tensors only: conv2d (the causal temporal conv is a
depthwise ``(kt, 1)`` conv with dilation ``(H, 1)`` over the height-stacked buffer), linear, cat, slice, pad,
avg_pool2d and elementwise ops. ``step_layout`` (create_model option; ``with_step_layout`` makes a copy) puts the
channels last (``"nhwc"``: LiteRT, one XNNPACK partition with no layout transposes; the frame is permuted once) or
second (``"nchw"``: ExecuTorch's XNNPACK partitioner, ONNX Runtime and Core ML, which convert layouts themselves and
would run NHWC permutes as transposes). ``stexport.export`` picks the target's layout (`Target.step_layout`).
``with_step_layout(..., integer=True)`` (full-int8 exports) writes the step with ops that int8 kernels run; in its
NHWC form (LiteRT) the blocks' hard-swishes leave out their ``/ 6``, which the weights that read them fold in, so
there the deep buffers and the blocks' ``se_mean`` states hold six times the values above (same logits).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._base import ClipModel, State, StreamModel, unpack_clip
from ._movinet_config import SPECS, MoViNetSpec, same_out
from ._movinet_layers import (
    Act,
    Bneck,
    ConvBlock,
    ConvType,
    ConvUnit,
    StepLayout,
    activation,
    cumulative_mean,
    is_tracing,
    running_mean,
)
from ._registry import ModelEntry, Preprocess, register

M = TypeVar("M", bound=nn.Module)

ORIGIN = "Atze00/MoViNet-pytorch (TF-Hub kinetics-600 classification/3)"


class _Trunk(nn.Module):
    """The port's modules, added to a model so that its keys are the port's: ``conv1``, ``blocks`` (``b{i}_l{j}``),
    ``conv7`` and ``classifier`` (1x1 -> swish -> dropout -> 1x1, i.e. ``classifier.0`` and ``classifier.3``)."""

    conv1: ConvBlock
    blocks: nn.Sequential
    conv7: ConvBlock
    classifier: nn.Sequential

    def _build_trunk(self, spec: MoViNetSpec, *, conv_type: ConvType, causal: bool, num_classes: int,
                     input_size: int, pool_window: int | None = None) -> list[tuple[int, int]]:
        """Create the modules; returns each block's output size (h, w) for ``input_size`` frames."""
        act: Act = "swish" if conv_type == "3d" else "hardswish"
        self.conv1 = ConvBlock(3, spec.stem, (1, 3, 3), stride=2, act=act, conv_type=conv_type, causal=causal)
        size = (same_out(input_size, 2),) * 2
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        sizes = []
        for name, b in spec.blocks():
            blocks[name] = Bneck(b, in_size=size, pool_window=pool_window, conv_type=conv_type, causal=causal)
            size = (same_out(size[0], b.stride), same_out(size[1], b.stride))
            sizes.append(size)
        self.blocks = nn.Sequential(blocks)
        self.conv7 = ConvBlock(spec.stages[-1][-1].cout, spec.head, (1, 1, 1), act=act, conv_type=conv_type,
                               causal=causal)
        self.classifier = nn.Sequential(
            ConvBlock(spec.head, spec.hidden, (1, 1, 1), norm=False, bias=True, conv_type=conv_type, causal=causal),
            nn.SiLU(),
            nn.Dropout(p=0.2),
            ConvBlock(spec.hidden, num_classes, (1, 1, 1), norm=False, bias=True, conv_type=conv_type, causal=causal),
        )
        return sizes

    def bnecks(self) -> list[tuple[str, Bneck]]:
        return [(n, b) for n, b in self.blocks.named_children() if isinstance(b, Bneck)]


class MoViNetBase(_Trunk, ClipModel):
    """A base (non-causal, Conv3d) MoViNet. ``forward(clip [N, 3, T, H, W]) -> logits [N, K]``."""

    clip_layout = "NCTHW"

    def __init__(self, spec: MoViNetSpec, *, num_classes: int = 600, input_size: int | None = None,
                 num_frames: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.input_size = input_size or spec.input_size
        self.num_frames = num_frames or spec.num_frames
        self._build_trunk(spec, conv_type="3d", causal=False, num_classes=num_classes, input_size=self.input_size)

    def features(self, clip: Tensor) -> Tensor:
        """Pooled features ``[N, C_head, 1, 1, 1]`` (the classifier input) of ``clip [N, 3, T, H, W]``."""
        return self.conv7(self.blocks(self.conv1(clip))).mean((2, 3, 4), keepdim=True)

    def forward_packed(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x)).flatten(1)

    def with_step_layout(self, name: str, *, integer: bool = False) -> MoViNetBase:
        """For LiteRT (``"nhwc"``): a copy whose Conv3d layers are each written as one conv2d per temporal tap
        (`ConvUnit._conv3d_by_taps`): LiteRT has no grouped CONV_3D and XNNPACK no CONV_3D. Same numbers, same
        weights. ``"nchw"``: as built."""
        super().with_step_layout(name, integer=integer)
        by_taps = name == "nhwc"
        if all(u.conv3d_by_taps == by_taps for u in self.modules() if isinstance(u, ConvUnit)):
            return self
        other = copy.deepcopy(self)
        for u in other.modules():
            if isinstance(u, ConvUnit):
                u.conv3d_by_taps = by_taps
        return other

    def step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        """Ring buffer: ``frames [N, 3*T, H, W]`` (frame-major, oldest first) gets ``frame`` appended and the
        whole ``T``-frame window is classified (a full clip per step; zero frames until T have arrived)."""
        buf = torch.cat([state["frames"][:, 3:], frame], 1)
        return self.forward_packed(unpack_clip(buf, "N(T*C)HW")), {"frames": buf}


def _refold_after_load(module: nn.Module, incompatible_keys: object) -> None:
    module.refold()  # type: ignore[operator]


class MoViNetStream(_Trunk, StreamModel):
    """A causal (2+1)D stream MoViNet: ``forward(clip)`` is the causal clip, ``step`` the same thing per frame.
    The clip form is frame-major (``clip_layout "N(T*C)HW"``) and runs ``step``'s layers on all T frames at once."""

    clip_layout = "N(T*C)HW"

    fused_head_w1: Tensor
    fused_head_b1: Tensor
    fused_head_w2: Tensor
    fused_head_b2: Tensor
    one: Tensor

    def __init__(self, spec: MoViNetSpec, *, num_classes: int = 600, input_size: int | None = None,
                 num_frames: int | None = None, pool_window: int | None = None, step_layout: str = "nhwc") -> None:
        super().__init__()
        self.layout = StepLayout(step_layout)
        if pool_window is not None and pool_window < 1:
            raise ValueError(f"pool_window must be a positive number of frames or None, got {pool_window}")
        self.spec = spec
        self.num_classes = num_classes
        self.input_size = input_size or spec.input_size
        self.num_frames = num_frames or spec.num_frames
        self.pool_window = pool_window
        self._sizes = self._build_trunk(spec, conv_type="2plus1d", causal=True, num_classes=num_classes,
                                        input_size=self.input_size, pool_window=pool_window)
        for name in ("fused_head_w1", "fused_head_b1", "fused_head_w2", "fused_head_b2"):
            self.register_buffer(name, None, persistent=False)
        self.register_buffer("one", torch.ones(1, 1), persistent=False)  # 1 / count as a DIV of two tensors
        self._fold_sources: list[Tensor] = []
        self._fold_token: tuple[object, ...] = ()
        self.register_load_state_dict_post_hook(_refold_after_load)
        self.refold()

    # -- clip path (the reference) ---------------------------------------------------------------------------------
    def pooled(self, clip: Tensor) -> Tensor:
        """Causal pooled features per frame ``[N, C_head, T]`` (frame t: mean over frames 0..t)."""
        x = self.conv7(self.blocks(self.conv1(clip)))
        return cumulative_mean(x.mean((3, 4)), window=self.pool_window)

    def features(self, clip: Tensor) -> Tensor:
        """Pooled features of the last frame ``[N, C_head, 1, 1, 1]`` (the classifier input, as the port)."""
        return self.pooled(clip)[:, :, -1:, None, None]

    def forward_packed(self, x: Tensor) -> Tensor:
        """Logits ``[N, K]`` of the last frame of the clip ``x [N, T*3, H, W]`` (frame-major). Inference (eval mode
        without autograd, and every export): the T frames go through ``step``'s 4D layers at once (batch N*T) from
        a zero state, on folded weights, so the clip export is 4D like the stream export. Training (train mode, or
        autograd on): the port-shaped 5D path (`features`), whose BatchNorm and parameters take part."""
        if self.training or (torch.is_grad_enabled() and not is_tracing()):
            return self.classifier(self.features(unpack_clip(x, self.clip_layout))).flatten(1)
        n, t, h, w = int(x.shape[0]), int(x.shape[1]) // 3, int(x.shape[2]), int(x.shape[3])
        frames = self.layout.from_nchw(x.reshape(n * t, 3, h, w))
        if not is_tracing():
            self._ensure_folded()
            frames = frames.contiguous()
        zero = {k: x.new_zeros(n, *shape) for k, shape in self.state_layout((h, w))}
        m, _ = self._advance(frames, zero, frames=t)
        return self._classify(m.reshape(n, t, -1)[:, -1])

    def clip_logits(self, clip: Tensor) -> Tensor:
        """Per-frame logits ``[N, T, K]`` of the causal clip (what ``step`` returns frame by frame): the reference
        path, 5D like the port."""
        p = self.pooled(clip)
        return self.classifier(p[..., None, None]).flatten(2).transpose(1, 2)

    # -- frame path --------------------------------------------------------------------------------------------------
    def state_layout(self, frame_size: tuple[int, int] | None = None) -> list[tuple[str, tuple[int, ...]]]:
        """``[(name, shape without batch), ...]`` in ``init_state`` order, for frames of ``frame_size`` (H, W;
        default the model's input size)."""
        sizes = self._sizes if frame_size is None else self._block_sizes(*frame_size)
        out: list[tuple[str, tuple[int, ...]]] = [("frame_count", (1,))]
        for (name, blk), (h, w) in zip(self.bnecks(), sizes, strict=True):
            c, kt = blk.deep.conv_1.conv.out_channels, blk.deep.kernel[0]
            if blk.deep.conv_2 is not None:
                out.append((f"{name}_deep_buf", self.layout.buffer_shape((kt - 1) * h, w, c)))
            out.append((f"{name}_se_mean", (c,)))
        out.append(("head_mean", (self.spec.head,)))
        return out

    def _block_sizes(self, h: int, w: int) -> list[tuple[int, int]]:
        """Each block's output size for ``h x w`` frames (TF-"same": ceil division by every stride)."""
        h, w = same_out(h, 2), same_out(w, 2)
        sizes = []
        for _, b in self.spec.blocks():
            h, w = same_out(h, b.stride), same_out(w, b.stride)
            sizes.append((h, w))
        return sizes

    def _fit_state(self, frame: Tensor, state: State) -> State:
        """Eager only: a zero state made for another frame size (a fresh ``init_state()``) is re-made for this
        frame's size; a non-zero one cannot be, and raises."""
        layout = self.state_layout((int(frame.shape[-2]), int(frame.shape[-1])))
        if all(tuple(state[k].shape[1:]) == shape for k, shape in layout if k in state):
            return state
        if any(bool(v.any()) for v in state.values()):
            raise ValueError(f"the state was made for other frames than {list(frame.shape[-2:])}: start a new "
                             "stream with init_state() (or keep the frame size of the stream)")
        n, ref = frame.shape[0], state["frame_count"]
        return {k: ref.new_zeros(n, *shape) for k, shape in layout}

    def state_layouts(self) -> dict[str, str]:
        """Axis meaning of each state for the manifest: deep buffers in the step layout, frames stacked on H."""
        return {name: self.layout.buffer_layout if name.endswith("_deep_buf") else "NC"
                for name, _ in self.state_layout()}

    def state_kinds(self) -> dict[str, str]:
        """``"buffer"`` for the causal-conv buffers (delayed copies of an activation: a full-integer export carries
        them in that activation's quantization), ``"accumulator"`` for the frame count and the running means (kept
        float: an int8 running mean would stop moving once its updates fall under one quantization step)."""
        return {name: "buffer" if name.endswith("_deep_buf") else "accumulator" for name, _ in self.state_layout()}

    def with_step_layout(self, name: str, *, integer: bool = False) -> MoViNetStream:
        """This model, or a copy (same weights) whose ``step`` runs in layout ``name`` with integer-kernel op forms
        or not (`StepLayout`)."""
        return _with_step_layout(self, name, integer=integer)

    def init_state(self, batch_size: int = 1) -> State:
        w = self.conv1.conv_1.conv.weight
        return {name: torch.zeros(batch_size, *shape, dtype=w.dtype, device=w.device)
                for name, shape in self.state_layout()}

    @torch.no_grad()
    def refold(self) -> None:
        """Rebuild the folded weights used by ``step`` from the current parameters (done automatically after
        ``load_state_dict``, ``.to()/.double()/...``, and before an eager ``step`` if a parameter changed)."""
        self.conv1.refold()
        self.conv7.refold()
        # integer step: the blocks' hard-swishes skip their "/ 6", folded into the weights that read them
        gain = self.layout.hardswish_gain if self.conv1.act == "hardswish" else 1.0
        for _, blk in self.bnecks():
            blk.refold(act_gain=gain)
        dtype = self.conv1.conv_1.conv.weight.dtype
        dense9, dense10 = self.classifier[0], self.classifier[3]
        assert isinstance(dense9, ConvBlock) and isinstance(dense10, ConvBlock)
        w1, b1 = dense9.conv_1.folded()
        w2, b2 = dense10.conv_1.folded()
        self.fused_head_w1, self.fused_head_b1 = w1.flatten(1).to(dtype), b1.to(dtype)
        self.fused_head_w2, self.fused_head_b2 = w2.flatten(1).to(dtype), b2.to(dtype)
        self._fold_sources = [*self.parameters(), *(b for n, b in self.named_buffers()
                                                    if n.endswith(("running_mean", "running_var")))]
        self._fold_token = self._token()

    def _token(self) -> tuple[object, ...]:
        try:
            return (len(self._fold_sources), sum(t._version for t in self._fold_sources))
        except RuntimeError:  # inference tensors carry no version counter: always refold
            return (None,)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> MoViNetStream:
        out = super()._apply(fn, recurse)
        if self._fold_sources:
            self.refold()
        return out

    def _ensure_folded(self) -> None:
        if self._token() != self._fold_token or self._fold_token == (None,):
            self.refold()

    def step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        """``frame [N, 3, H, W]`` and ``state`` (see the module docstring) -> (logits ``[N, K]`` of frames 0..t,
        new state). 4D tensors only; does not modify ``state``."""
        x = self.layout.frame(frame)
        if not is_tracing():
            self._ensure_folded()
            self.check_frame(frame)
            state = self._fit_state(frame, state)
            x = x.contiguous()  # eager speed only (same values): NHWC convs then run channels-last kernels
        m, new = self._advance(x, state)
        return self._classify(m), new

    def _advance(self, x: Tensor, state: State, *, frames: int = 1) -> tuple[Tensor, State]:
        """``x [N*F, H, W, 3]`` (or NCHW, the step layout): F consecutive frames of each stream (frame-major) after
        ``state`` -> (the pooled head features at each frame ``[N*F, C_head]``, the state after the last frame)."""
        layout = self.layout
        if frames == 1:
            count = state["frame_count"] + 1.0
        else:  # [N, F]: the count at each frame
            count = state["frame_count"] + torch.arange(1, frames + 1, dtype=x.dtype, device=x.device)
        if self.pool_window is not None:
            count = count.clamp(max=float(self.pool_window))
        r = self.one / count.reshape(-1, 1)  # (a tensor DIV, which every delegate takes; 1.0 / x exports as reciprocal)
        new: State = {"frame_count": count if frames == 1 else count[:, -1:]}
        x = self.conv1.step(x, layout=layout)[0]
        for name, blk in self.bnecks():
            buf_key = f"{name}_deep_buf"
            buf = state[buf_key] if blk.deep.conv_2 is not None else None
            x, buf, mean = blk.step(x, buf, state[f"{name}_se_mean"], r, frames=frames, layout=layout)
            if buf is not None:
                new[buf_key] = buf
            new[f"{name}_se_mean"] = mean
        x = self.conv7.step(x, layout=layout)[0]
        m, new["head_mean"] = running_mean(layout.spatial_mean(x), state["head_mean"], r, frames=frames,
                                           saturating=self.pool_window is not None, apart=layout.integer)
        return m, new

    def _classify(self, m: Tensor) -> Tensor:
        """Pooled head features ``[N, C_head]`` -> logits ``[N, K]``."""
        h = activation(F.linear(m, self.fused_head_w1, self.fused_head_b1), "swish")
        return F.linear(h, self.fused_head_w2, self.fused_head_b2)


class MoViNetEnsemble(StreamModel):
    """The paper's temporal ensemble (seed 002): two stream MoViNets of the same architecture (submodules ``a``
    and ``b``, trained independently), with ``b`` one frame behind ``a``; logits averaged before softmax.

    Definition (export friendly, no frame-sized delay buffer): at frame t the output is
    ``(a(frames 0..t) + b(frames 0..t-1)) / 2``, and ``a(frame 0)`` alone at t = 0. ``b`` steps on the current
    frame and its logits are carried one step in state ``b_prev_logits [N, K]``; so ``b`` never sees a made-up
    (zero) frame. (The paper runs both at half the frame rate with a one-frame offset; at the full rate this is the
    one-frame offset.) Both models step every frame, so a step costs two stream models.

    State: ``a_<name>`` and ``b_<name>`` for every state of `MoViNetStream`, then ``b_prev_logits``.
    Checkpoint: a plain state_dict with ``a.``/``b.`` prefixed port keys (see `ensemble_checkpoint`), e.g. two
    port stream checkpoints combined as ``ensemble_checkpoint(torch.load(a), torch.load(b))``.
    """

    clip_layout = "N(T*C)HW"

    def __init__(self, spec: MoViNetSpec, *, num_classes: int = 600, input_size: int | None = None,
                 num_frames: int | None = None, pool_window: int | None = None, step_layout: str = "nhwc") -> None:
        super().__init__()
        kw = dict(num_classes=num_classes, input_size=input_size, num_frames=num_frames, pool_window=pool_window,
                  step_layout=step_layout)
        self.a = MoViNetStream(spec, **kw)  # type: ignore[arg-type]
        self.b = MoViNetStream(spec, **kw)  # type: ignore[arg-type]
        self.spec, self.num_classes, self.pool_window = spec, num_classes, pool_window
        self.input_size, self.num_frames = self.a.input_size, self.a.num_frames

    def refold(self) -> None:
        """Rebuild both members' folded weights (see `MoViNetStream.refold`)."""
        self.a.refold()
        self.b.refold()

    def forward_packed(self, x: Tensor) -> Tensor:
        """``x [N, T*3, H, W]`` (frame-major) -> logits ``[N, K]`` of the last frame."""
        la = self.a.forward_packed(x)
        if x.shape[1] < 6:
            return la
        return 0.5 * (la + self.b.forward_packed(x[:, :-3]))

    def clip_logits(self, clip: Tensor) -> Tensor:
        """Per-frame logits ``[N, T, K]`` (what ``step`` returns frame by frame)."""
        la, lb = self.a.clip_logits(clip), self.b.clip_logits(clip)
        return torch.cat([la[:, :1], 0.5 * (la[:, 1:] + lb[:, :-1])], 1)

    def state_layouts(self) -> dict[str, str]:
        inner = self.a.state_layouts()
        return {**{f"{m}_{k}": v for m in "ab" for k, v in inner.items()}, "b_prev_logits": "NK"}

    def state_kinds(self) -> dict[str, str]:
        inner = self.a.state_kinds()
        return {**{f"{m}_{k}": v for m in "ab" for k, v in inner.items()}, "b_prev_logits": "accumulator"}

    def with_step_layout(self, name: str, *, integer: bool = False) -> MoViNetEnsemble:
        """This model, or a copy (same weights) whose members step in layout ``name`` (see `MoViNetStream`)."""
        return _with_step_layout(self, name, integer=integer)

    def init_state(self, batch_size: int = 1) -> State:
        state = {f"a_{k}": v for k, v in self.a.init_state(batch_size).items()}
        state.update({f"b_{k}": v for k, v in self.b.init_state(batch_size).items()})
        state["b_prev_logits"] = torch.zeros_like(state["a_frame_count"]).expand(-1, self.num_classes).clone()
        return state

    def step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        # each state is read before the sub-model step that writes its new value: ExecuTorch can then feed every
        # state output back as the next input in place (`stexport.targets._executorch.states_read_before_written`).
        # (Written as ``la - la * half + prev * half``, which reads them all first, the int8 LiteRT step's logits
        # missed its parity gate: max abs err 0.011 against 0.0005 with this form.)
        half = state["a_frame_count"].clamp(max=1.0) * 0.5  # 0 at frame 0, then 1/2
        la, sa = self.a.step(frame, {k[2:]: v for k, v in state.items() if k.startswith("a_")})
        towards_prev = state["b_prev_logits"] - la
        lb, sb = self.b.step(frame, {k[2:]: v for k, v in state.items() if k.startswith("b_") and k != "b_prev_logits"})
        logits = la + towards_prev * half
        new = {f"a_{k}": v for k, v in sa.items()}
        new.update({f"b_{k}": v for k, v in sb.items()})
        new["b_prev_logits"] = lb
        return logits, new


def _with_step_layout(model: M, name: str, *, integer: bool) -> M:
    """``model`` if every stream MoViNet in it steps in that form already, else a deep copy that does."""
    layout = StepLayout(name, integer=integer)
    streams = [m for m in model.modules() if isinstance(m, MoViNetStream)]
    if all((m.layout.name, m.layout.integer) == (name, integer) for m in streams):
        return model
    other = copy.deepcopy(model)
    for m in other.modules():
        if isinstance(m, MoViNetStream):
            m.layout = layout
            m.refold()  # (the integer form folds differently)
    return other


def ensemble_checkpoint(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The ensemble's checkpoint layout from two port stream state_dicts: ``{"a.<key>": ..., "b.<key>": ...}``."""
    return {**{f"a.{k}": v for k, v in a.items()}, **{f"b.{k}": v for k, v in b.items()}}


def _preprocess(spec: MoViNetSpec) -> Preprocess:
    return Preprocess(size=(spec.input_size, spec.input_size), value_range=(0.0, 1.0), fps=spec.fps)


def _register_all() -> None:
    common = dict(family="movinet", num_classes=600, labels="kinetics600.txt", origin=ORIGIN, dataset="Kinetics-600")
    for key, spec in SPECS.items():
        clip = f"{spec.num_frames} frames @ {spec.fps:g} fps, {spec.input_size}x{spec.input_size}"
        register(ModelEntry(
            name=f"movinet_{key}", build=partial(MoViNetBase, spec), num_frames=spec.num_frames,
            input_size=spec.input_size, streaming=False, preprocess=_preprocess(spec),
            description=f"MoViNet-{spec.name} base (Conv3d); evaluated on {clip}; step = ring buffer of the clip",
            **common))  # type: ignore[arg-type]
        register(ModelEntry(
            name=f"movinet_{key}_stream", build=partial(MoViNetStream, spec), num_frames=spec.num_frames,
            input_size=spec.input_size, streaming=True, preprocess=_preprocess(spec),
            description=f"MoViNet-{spec.name} stream (causal 2+1D, stream buffers); {clip} accumulated"
                        + ("" if key in ("a0", "a1", "a2") else "; the port released no stream weights for it"),
            **common))  # type: ignore[arg-type]
    a0 = SPECS["a0"]
    register(ModelEntry(
        name="movinet_a0_stream_ensemble", build=partial(MoViNetEnsemble, a0), num_frames=a0.num_frames,
        input_size=a0.input_size, streaming=True, preprocess=_preprocess(a0),
        description="temporal ensemble of two MoViNet-A0 stream models, the second one frame behind; checkpoint "
                    "= both port stream state_dicts with 'a.'/'b.' key prefixes",
        **common))  # type: ignore[arg-type]


_register_all()

__all__ = ["MoViNetBase", "MoViNetEnsemble", "MoViNetStream", "ensemble_checkpoint"]
