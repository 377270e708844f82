"""SqueezeTime (Zhai et al., "No Time to Waste: Squeeze Time into Channel for Mobile Video Understanding").

Origin: xinghaochen/SqueezeTime @ 465900f (mmaction2 backbone ``SqueezeTime`` + head ``I2DHead``, config
``configs/recognition/SqueezeTime/SqueezeTime_K400.py``). The clip's time axis is folded into channels
(``[N, 3, T, H, W]`` -> ``[N, 3*T, H, W]``, channel ``c*T + t``) and the whole network is 2D.

Module keys are the released mmengine checkpoint's (``backbone.net.<resnet key>``, ``cls_head.fc_cls.*``), so the
checkpoint filter is the identity once ``unwrap`` has picked ``ckpt["state_dict"]``. Unlike the authors' loader,
loading is strict: BatchNorm statistics and every other key must be present.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ._base import ClipModel
from ._registry import ModelEntry, Preprocess, register
from ._squeezetime_blocks import DEPTHS, SqueezeTimeResNet, stage_sizes

K400_MEAN = (123.675, 116.28, 103.53)
K400_STD = (58.395, 57.12, 57.375)


class SqueezeTimeBackbone(nn.Module):
    """The authors' ``SqueezeTime`` wrapper (holds the trunk as ``net``): ``[N, 3*T, H, W]`` -> ``[N, C, h, w]``."""

    def __init__(self, **trunk: object) -> None:
        super().__init__()
        self.net = SqueezeTimeResNet(**trunk)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class I2DHead(nn.Module):
    """mmaction ``I2DHead``: global avg pool, dropout (training only), ``fc_cls``; ``[N, C, h, w]`` -> ``[N, K]``."""

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float = 0.5) -> None:
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        self.fc_cls = nn.Linear(in_channels, num_classes)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avg_pool(x)
        if self.dropout is not None and self.training:
            x = self.dropout(x)
        return self.fc_cls(x.flatten(1))


class SqueezeTime(ClipModel):
    """SqueezeTime recognizer (mmaction ``Recognizer3D`` = ``backbone`` + ``cls_head``), a clip model.

    ``forward_packed(x [N, 3*T, H, W])`` (channel ``c*T + t``) -> logits ``[N, K]``; ``forward(clip [N, 3, T, H, W])``
    and the ring-buffer ``step`` (state ``frames`` ``[N, 3*T, H, W]``, same layout) come from `ClipModel`.

    Knobs of the authors' config: ``num_frames`` (input channels ``3*num_frames``), ``input_size`` (the IOI
    positional maps ``pos_dim`` default to the stage sizes, 224 -> [56, 28, 14, 7]), ``depth`` (10/18/34 basic
    blocks, 50/101/152/200 bottlenecks), ``widen_factor``, ``dropout`` (head, training only), ``spatial_stride``.
    """

    clip_layout = "N(C*T)HW"

    def __init__(self, *, num_classes: int = 400, num_frames: int = 16, input_size: int = 224, depth: int = 50,
                 widen_factor: float = 1.0, dropout: float = 0.5, spatial_stride: Sequence[int] = (1, 2, 2, 2),
                 pos_dim: Sequence[int] | None = None) -> None:
        super().__init__()
        self.num_classes, self.num_frames, self.input_size = num_classes, num_frames, input_size
        if pos_dim is None:
            pos_dim = stage_sizes(input_size, spatial_stride)
        self.backbone = SqueezeTimeBackbone(depth=depth, in_channels=3 * num_frames, widen_factor=widen_factor,
                                            spatial_stride=tuple(spatial_stride), pos_dim=tuple(pos_dim))
        self.cls_head = I2DHead(self.backbone.net.out_channels, num_classes, dropout=dropout)

    def forward_packed(self, x: Tensor) -> Tensor:
        """``x`` ``[N, 3*T, H, W]`` (channel ``c*T + t``, normalised RGB) -> logits ``[N, K]``."""
        return self.cls_head(self.backbone(x))


register(ModelEntry(
    name="squeezetime", family="squeezetime", build=SqueezeTime, num_classes=400, labels="kinetics400.txt",
    num_frames=16, input_size=224, streaming=False, origin="xinghaochen/SqueezeTime", dataset="Kinetics-400",
    preprocess=Preprocess(size=(224, 224), value_range=(0.0, 255.0), mean=K400_MEAN, std=K400_STD,
                          resize="shorter side to 256, then center crop 224",
                          resize_shorter=256, frame_stride=4),
    description=f"SqueezeTime-ResNet50 (time squeezed into channels, CTL blocks), 16x224 K400 "
                f"(released SqueezeTime_K400_71.64.pth); depths {sorted(DEPTHS)} via depth=",
    defaults={"num_frames": 16, "input_size": 224, "depth": 50}))
