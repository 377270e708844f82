"""TSM networks: the offline TSN (bi-directional shift, average consensus) and the online (uni-directional,
causal) models whose shift buffers are explicit stream state.

Offline (`TSN`, a `ClipModel`): the clip travels frame-major ``[N, T*3, H, W]`` (``clip_layout "N(T*C)HW"``, the
authors' input), is viewed as ``[N*T, 3, H, W]``, every segment runs the shifted 2D backbone, ``new_fc`` gives
per-segment logits ``[N, T, K]`` and their mean is the clip's logits (``ops/models.py``, consensus "avg").

Online (`OnlineTSM`, a `StreamModel`): ``step`` runs one frame with the sites reading the previous frame's buffers
(state ``shift_0..shift_{S-1}``; `step_with_shift_state`). The clip forward runs the same network causally over
all frames at once (uni-directional clip shift) and returns the LAST frame's logits, i.e. what ``step`` returns
after the clip's last frame from a fresh state; ``forward_frames`` returns every frame's logits ``[N, T, K]``.
The clip forward is the reference (the authors' modules, BatchNorm and all). ``step`` runs the same network on
folded weights (`_tsm_fold`) in its step layout: ``"nchw"`` (default; buffers ``[N, C_i//8, H_i, W_i]`` as the
authors' demo) or ``"nhwc"`` (channels-last throughout, buffers ``[N, H_i, W_i, C_i//8]``: LiteRT's layout, so its
graph has no layout transposes but the frame's). ``stexport.export`` picks the target's (`Target.step_layout`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import ClassVar, Self

import torch
from torch import Tensor, nn

from ._base import ClipModel, State, StreamModel, pack_clip
from ._movinet_layers import StepLayout, is_tracing
from ._registry import StateDict
from ._tsm_backbones import build_backbone, mobilenet_v2_embed, mobilenet_v2_features
from ._tsm_fold import Folding
from ._tsm_shift import ShiftIO, init_shift_state, shift_sites, step_with_shift_state

# test_models.py: TSN checkpoints saved with the head as base_model.classifier are renamed to new_fc
_TSN_RENAMES = {"base_model.classifier.weight": "new_fc.weight", "base_model.classifier.bias": "new_fc.bias"}


def tsn_checkpoint_filter(state_dict: Mapping[str, Tensor]) -> StateDict:
    """A released TSN state_dict (``module.`` already stripped) -> `TSN` keys: rename the classifier to ``new_fc``."""
    return {_TSN_RENAMES.get(k, k): v for k, v in state_dict.items()}


def _frames(x: Tensor) -> tuple[Tensor, int, int]:
    """Packed clip ``[N, T*3, H, W]`` -> (frames ``[N*T, 3, H, W]``, N, T)."""
    n, tc, h, w = x.shape
    t = tc // 3
    return x.reshape(n * t, 3, h, w), n, t


class TSN(ClipModel):
    """Offline TSM: TSN with bi-directional temporal shift ("blockres", ``fold_div`` 8) and average consensus.

    Keys: ``base_model.*`` (backbone, sites wrap their conv: ``...conv1.net.weight``) and ``new_fc.*``.
    """

    clip_layout: ClassVar[str] = "N(T*C)HW"
    #: the clip export also returns the per-segment logits, so a shift traced as a constant fails the parity gate
    clip_outputs: ClassVar[tuple[str, ...]] = ("logits", "segment_logits")

    def __init__(self, *, backbone: str, num_classes: int, num_frames: int = 8, input_size: int = 224,
                 fold_div: int = 8) -> None:
        super().__init__()
        self.num_classes, self.num_frames, self.input_size = num_classes, num_frames, input_size
        self.base_model = build_backbone(backbone, site_style="wrap", fold_div=fold_div)
        self.new_fc = nn.Linear(self.base_model.feature_dim, num_classes)

    def forward_packed_segments(self, x: Tensor) -> Tensor:
        """Frame-major clip ``[N, T*3, H, W]`` -> per-segment logits ``[N, T, K]`` (before the consensus)."""
        frames, n, t = _frames(x)
        feats = self.base_model(frames, ShiftIO.clip(t, bidirectional=True))
        return self.new_fc(feats).reshape(n, t, self.num_classes)

    def forward_packed(self, x: Tensor) -> Tensor:
        """Frame-major clip ``[N, T*3, H, W]`` -> logits ``[N, K]`` (mean of the segments' logits)."""
        return self.forward_packed_segments(x).mean(1)

    def forward_packed_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """``logits`` ``[N, K]`` and ``segment_logits`` ``[N, T, K]`` from one pass."""
        segments = self.forward_packed_segments(x)
        return {"logits": segments.mean(1), "segment_logits": segments}

    def forward_segments(self, clip: Tensor) -> Tensor:
        """Clip ``[N, 3, T, H, W]`` -> per-segment logits ``[N, T, K]``."""
        return self.forward_packed_segments(pack_clip(clip, self.clip_layout))


def _refold_after_load(module: nn.Module, incompatible_keys: object) -> None:
    module.refold()  # type: ignore[operator]


class OnlineTSM(StreamModel):
    """Online TSM: uni-directional shift whose buffers are the stream state (generic over the network).

    Subclasses build their modules, then call ``self.refold()``, and provide ``embed(frames [B, 3, H, W], io) ->
    [B, F]`` (the reference), ``embed_step(frames [B, H, W, 3] in the step layout, io) -> [B, F]`` (folded) and
    ``classify([B, F]) -> [B, K]``.
    """

    clip_layout: ClassVar[str] = "N(T*C)HW"

    def __init__(self, *, num_classes: int, num_frames: int, input_size: int, step_layout: str) -> None:
        super().__init__()
        self.num_classes, self.num_frames, self.input_size = num_classes, num_frames, input_size
        self.layout = StepLayout(step_layout)
        self._folded = False
        self._fold_token: object = None  # see _weights_token
        self.register_load_state_dict_post_hook(_refold_after_load)

    def embed(self, x: Tensor, io: ShiftIO) -> Tensor:
        raise NotImplementedError

    def embed_step(self, x: Tensor, io: ShiftIO) -> Tensor:
        raise NotImplementedError

    def classify(self, feats: Tensor) -> Tensor:
        raise NotImplementedError

    def _logits(self, x: Tensor, io: ShiftIO) -> Tensor:
        return self.classify(self.embed(x, io))

    def _step_logits(self, x: Tensor, io: ShiftIO) -> Tensor:
        return self.classify(self.embed_step(x, io))

    def init_state(self, batch_size: int = 1) -> State:
        """Zero shift buffers ``{shift_i: [N, C_i//8, H_i, W_i]}`` (step layout ``"nhwc"``: ``[N, H_i, W_i,
        C_i//8]``) in the parameters' dtype; zeros = no previous frame."""
        return init_shift_state(self, batch_size=batch_size, frame_hw=self.frame_size(),
                                channels_last=self.layout.channels_last, dtype=next(self.parameters()).dtype)

    def state_names(self) -> list[str]:
        return [name for name, _ in shift_sites(self)]

    def state_layouts(self) -> dict[str, str]:
        """Every shift buffer is a feature map of the step layout: ``"NHWC"`` or ``"NCHW"``."""
        axes = "NHWC" if self.layout.channels_last else "NCHW"
        return {name: axes for name in self.state_names()}

    def state_kinds(self) -> dict[str, str]:
        """Every shift buffer is a delayed copy of an activation (int8 exports carry it in that quantization)."""
        return dict.fromkeys(self.state_names(), "buffer")

    def with_step_layout(self, name: str, *, integer: bool = False) -> Self:
        """This model if its ``step`` runs in layout ``name`` (``"nhwc"`` or ``"nchw"``), else a copy (same weights)
        that does; the copy's states are in that layout. (``integer``: the step's ops are integer-ready as they
        are.)"""
        layout = StepLayout(name, integer=integer)
        if layout.name == self.layout.name:
            return self
        other = copy.deepcopy(self)
        other.layout = layout
        return other

    @torch.no_grad()
    def refold(self) -> None:
        """Rebuild ``step``'s folded weights from the parameters and BatchNorm statistics (done after
        ``load_state_dict`` and ``.to()/.double()``, and before an eager ``step`` whenever a parameter or statistic
        changed, e.g. in training)."""
        for m in self.modules():
            if isinstance(m, Folding):
                m.refold_runs()
        self._folded, self._fold_token = True, self._weights_token()

    def _weights_token(self) -> object:
        """Identity and version of every tensor the folded weights come from (None: inference tensors, which
        carry no version: always refold)."""
        sources = [*self.parameters(), *(b for n, b in self.named_buffers() if n.endswith(("_mean", "_var")))]
        try:
            return tuple((id(t), t._version) for t in sources)
        except RuntimeError:
            return None

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Self:
        out = super()._apply(fn, recurse)
        if self._folded:  # fold again from the converted parameters
            self.refold()
        return out

    def step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        """``frame`` ``[N, 3, H, W]`` + previous buffers -> (logits ``[N, K]``, this frame's buffers), on the folded
        weights in the step layout (the frame is NCHW in both layouts)."""
        self.check_frame(frame)
        x = self.layout.from_nchw(frame)
        if not is_tracing():
            token = self._weights_token()
            if token is None or token != self._fold_token:
                self.refold()
            x = x.contiguous()  # eager speed only (same values): NHWC convs then run channels-last kernels
        return step_with_shift_state(self, self._step_logits, x, state, channel_axis=3 if self.layout.channels_last
                                     else 1)

    def forward_packed_frames(self, x: Tensor) -> Tensor:
        """Frame-major clip ``[N, T*3, H, W]`` -> causal per-frame logits ``[N, T, K]`` (frame t sees 0..t)."""
        frames, n, t = _frames(x)
        return self._logits(frames, ShiftIO.clip(t, bidirectional=False)).reshape(n, t, self.num_classes)

    def forward_packed(self, x: Tensor) -> Tensor:
        """Frame-major clip ``[N, T*3, H, W]`` -> the last frame's logits ``[N, K]`` (= stepping the clip)."""
        return self.forward_packed_frames(x)[:, -1]

    def forward_frames(self, clip: Tensor) -> Tensor:
        """Clip ``[N, 3, T, H, W]`` -> causal per-frame logits ``[N, T, K]``."""
        return self.forward_packed_frames(pack_clip(clip, self.clip_layout))


class OnlineMobileNetV2(OnlineTSM):
    """The authors' online demo network (``online_demo/mobilenet_v2_tsm.py``): keys ``features.*``, ``classifier.*``;
    10 shift buffers (sites in ``features.{3,5,6,8,9,10,12,13,15,16}``, before the block's expansion conv)."""

    def __init__(self, *, num_classes: int, num_frames: int = 8, input_size: int = 224, fold_div: int = 8,
                 step_layout: str = "nchw") -> None:
        super().__init__(num_classes=num_classes, num_frames=num_frames, input_size=input_size,
                         step_layout=step_layout)
        self.features = mobilenet_v2_features(site_style="bare", fold_div=fold_div)
        self.classifier = nn.Linear(1280, num_classes)
        self.refold()

    def embed(self, x: Tensor, io: ShiftIO) -> Tensor:
        return mobilenet_v2_embed(self.features, x, io)

    def embed_step(self, x: Tensor, io: ShiftIO) -> Tensor:
        return self.features.step(x, io, layout=self.layout)

    def classify(self, feats: Tensor) -> Tensor:
        return self.classifier(feats)


class OnlineTSN(OnlineTSM):
    """A TSN network (keys ``base_model.*``, ``new_fc.*``, so offline TSN checkpoints load) run online: the same
    sites, uni-directional, one buffer per site (ResNet-50: 16, at every bottleneck's ``conv1`` input)."""

    def __init__(self, *, backbone: str, num_classes: int, num_frames: int = 8, input_size: int = 224,
                 fold_div: int = 8, step_layout: str = "nchw") -> None:
        super().__init__(num_classes=num_classes, num_frames=num_frames, input_size=input_size,
                         step_layout=step_layout)
        self.base_model = build_backbone(backbone, site_style="wrap", fold_div=fold_div)
        self.new_fc = nn.Linear(self.base_model.feature_dim, num_classes)
        self.refold()

    def embed(self, x: Tensor, io: ShiftIO) -> Tensor:
        return self.base_model(x, io)

    def embed_step(self, x: Tensor, io: ShiftIO) -> Tensor:
        return self.base_model.step(x, io, layout=self.layout)

    def classify(self, feats: Tensor) -> Tensor:
        return self.new_fc(feats)
