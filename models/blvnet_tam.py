"""bLVNet-TAM (Fan et al., "More Is Less: Learning Efficient Video Representations by Big-Little Network and
Depthwise Temporal Aggregation", NeurIPS 2019; IBM/bLVNet-TAM).

A bLResNet backbone runs on the ``T`` frames of a clip in pairs: the odd frame of each pair through a deep,
low-resolution "big" branch, the even frame through a narrow, full-resolution "little" branch, fused per pair;
Temporal Aggregation Modules (per-channel weighted sums of the previous, current and next frame) mix information
over time. The classifier runs on each of the ``T/2`` big-frame features and the logits are averaged.

The TAM reads the NEXT frame, so the model is not causal: it is a clip model (`ClipModel`); its ``step`` is the
ring buffer of the last ``T`` frames (every step costs one full clip).

Input: ``forward(clip [N, 3, T, H, W])``; ``forward_packed(x [N, T*3, H, W])`` takes the authors' stacked layout
(channel ``t*3 + c``, frames T-major) and is what a clip export traces. No tensor above rank 4 inside it except
the final ``[N, T/2, K]`` logits average (rank 3).

Checkpoints: the released files (``st2stv2-bLVNet-TAM-50-a2-b4-f8x2.pth.tar``) are a plain state_dict with keys
``baseline_model.<backbone key>`` and ``new_fc.{weight,bias}``, exactly this module's keys; the training script's
``{"state_dict": {"module." + key}, "epoch": ...}`` also loads (`unwrap` strips ``module.``).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn

from ._base import ClipModel
from ._blvnet_layers import TAM, BigLittleBackbone, BigLittleStage, ShortcutPool, average_frames, frame_batch
from ._registry import IMAGENET_MEAN, IMAGENET_STD, ModelEntry, Preprocess, register


class BLVNetTAM(ClipModel):
    """bLVNet-TAM classifier (the authors' ``bLVNet_TAM`` wrapper): ``baseline_model`` + ``new_fc``.

    ``forward_packed(x [N, T*3, H, W]) -> [N, num_classes]``. With ``dropout > 0`` (the released models) the
    backbone's ``fc`` is a Dropout and ``new_fc`` classifies; with ``dropout == 0`` the backbone's own ``fc`` does
    (keys ``baseline_model.fc.*``), as in the authors' ``prepare_baseline``.
    """

    clip_layout = "N(T*C)HW"

    def __init__(self, *, num_classes: int, depth: int = 50, alpha: int = 2, beta: int = 4, num_frames: int = 16,
                 blending_frames: int = 3, dropout: float = 0.5, input_size: int = 224) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_frames = num_frames
        self.input_size = input_size
        self.baseline_model = BigLittleBackbone(depth=depth, alpha=alpha, beta=beta, num_frames=num_frames,
                                                blending_frames=blending_frames, dropout=dropout,
                                                fc_classes=0 if dropout > 0 else num_classes)
        self.new_fc = nn.Linear(self.baseline_model.feature_dim, num_classes) if dropout > 0 else None
        self.export_form = ""  # `with_step_layout`: "" as built, "float" or "integer" (the "nchw" forms)

    def with_step_layout(self, name: str, *, integer: bool = False) -> BLVNetTAM:
        """``"nchw"`` (ExecuTorch, ONNX Runtime, Core ML): a copy (same weights) whose strided shortcuts' average
        pools run as depthwise convs (`ShortcutPool`), whose 2x nearest upsamples are concatenations
        (`upsample2x_by_concat`), whose TAM shifts fill their zeros by a pad (float) or a constant (``integer``;
        `shift_frames`) and whose pair copies concatenate distinct nodes (`duplicate_pairs`): ops that ExecuTorch's
        XNNPACK delegate takes. ``"nhwc"`` (LiteRT, whose converter lowers the authors' ops as they are): the model
        as built. The forms agree to float rounding."""
        super().with_step_layout(name, integer=integer)
        form = "" if name == "nhwc" else "integer" if integer else "float"
        if form == self.export_form:
            return self
        other = copy.deepcopy(self)
        other.export_form = form
        for m in other.modules():
            if isinstance(m, TAM):
                m.zeros = {"": "like", "float": "pad", "integer": "constant"}[form]
            elif isinstance(m, (BigLittleBackbone, BigLittleStage, ShortcutPool)):
                m.xnnpack_forms = bool(form)
        return other

    def forward_packed(self, x: Tensor) -> Tensor:
        """``x`` ``[N, T*3, H, W]`` (channel ``t*3 + c``) -> logits ``[N, num_classes]`` (mean over big frames)."""
        feats = self.baseline_model(frame_batch(x))  # [N*T/2, 2048]
        logits = self.new_fc(feats) if self.new_fc is not None else feats
        return average_frames(logits, frames=self.num_frames // 2)


# Authors' test pipeline (README, test.py --disable_scaleup): 16 frames, one per uniform segment of the whole
# video (TSN sampling), shorter side to 224, center crop 224, /255, ImageNet mean/std, RGB.
SSV2_PREPROCESS = Preprocess(size=(224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             resize="shorter side to 224, then center crop 224")

# variant name -> (constructor options, registry fields); a new variant is one row
VARIANTS: dict[str, dict[str, Any]] = {
    "blvnet_tam_r50": {
        "config": {"depth": 50, "alpha": 2, "beta": 4, "num_frames": 16, "blending_frames": 3, "dropout": 0.5,
                   "input_size": 224},
        "num_classes": 174, "labels": "ssv2_174.txt", "dataset": "something-something-v2",
        "checkpoint": "st2stv2-bLVNet-TAM-50-a2-b4-f8x2.pth.tar",
        "summary": "bLResNet-50 (alpha 2, beta 4) + TAM (3 blending frames), f8x2 (16 frames = 8 big/little "
                   "pairs), 224x224, Something-Something V2 (59.1% top-1, 1 clip 1 crop)",
    },
}

for _name, _v in VARIANTS.items():
    _cfg = _v["config"]
    register(ModelEntry(
        name=_name, family="blvnet_tam", build=BLVNetTAM, num_classes=_v["num_classes"],
        labels=_v["labels"], num_frames=_cfg["num_frames"], input_size=_cfg["input_size"], streaming=False,
        preprocess=SSV2_PREPROCESS, origin="IBM/bLVNet-TAM", dataset=_v["dataset"],
        description=(f"{_v['summary']}. Clip model, not streaming: the TAM mixes each frame with its previous AND "
                     f"next frame (non-causal), so step() re-runs the full {_cfg['num_frames']}-frame window from a "
                     f"ring buffer. Frames: one per uniform segment of the whole video (TSN sampling). "
                     f"Checkpoint: the authors' {_v['checkpoint']} (plain state_dict) or a train.py checkpoint."),
        defaults=dict(_cfg)))
