"""TSM networks: the offline TSN (bi-directional shift, average consensus) and the online (uni-directional,
causal) models whose shift buffers are explicit stream state.

Offline (`TSN`, a `ClipModel`): the clip travels frame-major ``[N, T*3, H, W]`` (``clip_layout "N(T*C)HW"``, the
authors' input), is viewed as ``[N*T, 3, H, W]``, every segment runs the shifted 2D backbone, ``new_fc`` gives
per-segment logits ``[N, T, K]`` and their mean is the clip's logits (``ops/models.py``, consensus "avg").

Online (`OnlineTSM`, a `StreamModel`): ``step`` runs one frame with the sites reading the previous frame's buffers
(state ``shift_0..shift_{S-1}``; `step_with_shift_state`). The clip forward runs the same network causally over
all frames at once (uni-directional clip shift) and returns the LAST frame's logits, i.e. what ``step`` returns
after the clip's last frame from a fresh state; ``forward_frames`` returns every frame's logits ``[N, T, K]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torch import Tensor, nn

from ._base import ClipModel, State, StreamModel, pack_clip
from ._registry import StateDict
from ._tsm_backbones import build_backbone, mobilenet_v2_embed, mobilenet_v2_features
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


class OnlineTSM(StreamModel):
    """Online TSM: uni-directional shift whose buffers are the stream state (generic over the network).

    Subclasses provide ``embed(frames [B, 3, H, W], io) -> [B, F]`` and ``classify([B, F]) -> [B, K]``.
    """

    clip_layout: ClassVar[str] = "N(T*C)HW"

    def _init_dims(self, *, num_classes: int, num_frames: int, input_size: int) -> None:
        self.num_classes, self.num_frames, self.input_size = num_classes, num_frames, input_size

    def embed(self, x: Tensor, io: ShiftIO) -> Tensor:
        raise NotImplementedError

    def classify(self, feats: Tensor) -> Tensor:
        raise NotImplementedError

    def _logits(self, x: Tensor, io: ShiftIO) -> Tensor:
        return self.classify(self.embed(x, io))

    def init_state(self, batch_size: int = 1) -> State:
        """Zero shift buffers ``{shift_i: [N, C_i//8, H_i, W_i]}`` (zeros = no previous frame)."""
        return init_shift_state(self, batch_size=batch_size, frame_hw=self.frame_size())

    def state_names(self) -> list[str]:
        return [name for name, _ in shift_sites(self)]

    def step(self, frame: Tensor, state: State) -> tuple[Tensor, State]:
        """``frame`` ``[N, 3, H, W]`` + previous buffers -> (logits ``[N, K]``, this frame's buffers)."""
        self.check_frame(frame)
        return step_with_shift_state(self, self._logits, frame, state)

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

    def __init__(self, *, num_classes: int, num_frames: int = 8, input_size: int = 224, fold_div: int = 8) -> None:
        super().__init__()
        self._init_dims(num_classes=num_classes, num_frames=num_frames, input_size=input_size)
        self.features = mobilenet_v2_features(site_style="bare", fold_div=fold_div)
        self.classifier = nn.Linear(1280, num_classes)

    def embed(self, x: Tensor, io: ShiftIO) -> Tensor:
        return mobilenet_v2_embed(self.features, x, io)

    def classify(self, feats: Tensor) -> Tensor:
        return self.classifier(feats)


class OnlineTSN(OnlineTSM):
    """A TSN network (keys ``base_model.*``, ``new_fc.*``, so offline TSN checkpoints load) run online: the same
    sites, uni-directional, one buffer per site (ResNet-50: 16, at every bottleneck's ``conv1`` input)."""

    def __init__(self, *, backbone: str, num_classes: int, num_frames: int = 8, input_size: int = 224,
                 fold_div: int = 8) -> None:
        super().__init__()
        self._init_dims(num_classes=num_classes, num_frames=num_frames, input_size=input_size)
        self.base_model = build_backbone(backbone, site_style="wrap", fold_div=fold_div)
        self.new_fc = nn.Linear(self.base_model.feature_dim, num_classes)

    def embed(self, x: Tensor, io: ShiftIO) -> Tensor:
        return self.base_model(x, io)

    def classify(self, feats: Tensor) -> Tensor:
        return self.new_fc(feats)
