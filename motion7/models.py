"""Models trained here, on the procedural motion7 dataset (`stexport.motion7.data`), with their weights shipped.

No pretrained weights can be downloaded where this package is built, and the reference fixtures use synthetic
parameters; these small trained models give the precision work (fp16 / int8 exports) an accuracy to measure.
The label of a motion7 clip depends only on how a shape moves (left/right/up/down/rotate/zoom/static), so the
models must use their temporal state to score above chance.

* ``movinet_a0_stream_motion7``: `MoViNetStream` with the A0 block structure at half width (channels x0.5,
  rounded to multiples of 8), 64x64 input, 7 classes.
* ``tsm_mobilenetv2_online_motion7``: `OnlineMobileNetV2` (online TSM, 10 shift buffers as state) with a
  MobileNetV2 backbone at half width (last conv 640), 64x64 input, 7 classes.

Both were trained from scratch with ``python -m stexport.motion7.train --model <name>`` (1,000 steps of 16 fresh 8-frame
clips, AdamW, causal clip forward; MoViNet: cross-entropy on the last frame's logits; TSM: on the causal logits of
frames 1..7, with the twin-channel initialisation of `stexport.motion7.train.twin_shift_init`). ``accuracy`` is the
700-clip test split; the PyTorch clip forward, PyTorch ``step`` and the fp32 ONNX export agree on it.
Input: RGB uint8 frames at 64x64 scaled to [0, 1] (no mean/std), every frame (no stride).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

from torch import nn

from stexport.models._movinet_config import A0, BlockSpec, MoViNetSpec
from stexport.models._movinet_layers import make_divisible
from stexport.models._registry import ModelEntry, Preprocess, register
from stexport.models._tsm_backbones import MobileNetV2Config, mobilenet_v2_features
from stexport.models._tsm_nets import OnlineMobileNetV2
from stexport.models.movinet import MoViNetStream

FRAMES = 8
SIZE = 64
WIDTH = 0.5
LABELS = "motion7.txt"
DATASET = "stexport motion7 (procedural: shape motion over textured backgrounds, 7 classes)"
ORIGIN = "trained from scratch by stexport (python -m stexport.motion7.train)"
PREPROCESS = Preprocess(size=(SIZE, SIZE), value_range=(0.0, 1.0), resize="none: frames are generated at 64x64")


def _w(channels: int, width: float) -> int:
    return make_divisible(channels * width, 8)


def scaled_movinet_spec(spec: MoViNetSpec, width: float, *, input_size: int, num_frames: int) -> MoViNetSpec:
    """``spec`` with every channel count (stem, blocks, head, hidden) times ``width`` (multiples of 8)."""
    stages = tuple(tuple(BlockSpec(_w(b.cin, width), _w(b.cout, width), _w(b.expanded, width), b.kernel, b.stride)
                         for b in stage) for stage in spec.stages)
    return replace(spec, name=f"{spec.name}-w{width:g}", stem=_w(spec.stem, width), stages=stages,
                   head=_w(spec.head, width), hidden=_w(spec.hidden, width), input_size=input_size,
                   num_frames=num_frames)


def scaled_mobilenet_v2(width: float) -> MobileNetV2Config:
    """The MobileNetV2 table with every channel count (stem, stages, last conv) times ``width``."""
    base = MobileNetV2Config()
    return MobileNetV2Config(stem=_w(base.stem, width), last=_w(base.last, width),
                             stages=tuple((t, _w(c, width), n, s) for t, c, n, s in base.stages))


MOVINET_A0_HALF = scaled_movinet_spec(A0, WIDTH, input_size=SIZE, num_frames=FRAMES)
MOBILENET_V2_HALF = scaled_mobilenet_v2(WIDTH)


def build_online_mobilenet_v2(*, num_classes: int, num_frames: int = FRAMES, input_size: int = SIZE,
                              fold_div: int = 8, cfg: MobileNetV2Config = MOBILENET_V2_HALF) -> OnlineMobileNetV2:
    """`OnlineMobileNetV2` with the backbone ``cfg`` (its constructor is fixed at width 1.0, so the features and
    the classifier are rebuilt here; same module names, same shift sites)."""
    model = OnlineMobileNetV2(num_classes=num_classes, num_frames=num_frames, input_size=input_size,
                              fold_div=fold_div)
    model.features = mobilenet_v2_features(site_style="bare", fold_div=fold_div, cfg=cfg)
    model.classifier = nn.Linear(cfg.last, num_classes)
    model.refold()
    return model


#: top-1 on the 700-clip test split, last frame of 8; the same for the PyTorch clip forward, PyTorch ``step`` frame by
#: frame and the fp32 ONNX export stepped in ONNX Runtime (``stexport.motion7.train.evaluate``)
TOP1 = {"movinet_a0_stream_motion7": 0.9943, "tsm_mobilenetv2_online_motion7": 0.9829}


def _accuracy(name: str) -> dict[str, Any]:
    return {"top1": TOP1[name], "dataset": "stexport motion7 test split (seed 0)", "clips": 700, "frames": FRAMES,
            "source": "stexport.motion7.train.evaluate; weights from python -m stexport.motion7.train"}


_COMMON: dict[str, Any] = dict(num_classes=7, labels=LABELS, num_frames=FRAMES, input_size=SIZE, streaming=True,
                               preprocess=PREPROCESS, origin=ORIGIN, dataset=DATASET)

register(ModelEntry(
    name="movinet_a0_stream_motion7", family="movinet", build=partial(MoViNetStream, MOVINET_A0_HALF),
    weights="movinet_a0_stream_motion7.pt", accuracy=_accuracy("movinet_a0_stream_motion7"),
    description="MoViNet-A0 stream structure at half width, 64x64, trained on motion7 (7 motion classes)",
    **_COMMON))
register(ModelEntry(
    name="tsm_mobilenetv2_online_motion7", family="tsm", build=build_online_mobilenet_v2,
    weights="tsm_mobilenetv2_online_motion7.pt", accuracy=_accuracy("tsm_mobilenetv2_online_motion7"),
    description="online TSM MobileNetV2 at half width, 64x64, trained on motion7 (7 motion classes)",
    defaults={"input_size": SIZE, "num_frames": FRAMES},
    **_COMMON))
