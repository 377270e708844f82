"""SqueezeTime building blocks: the Channel-Time Learning module and the ResNet-style trunk around it.

Everything here is 2D: the clip arrives with time folded into channels (``[N, 3*T, H, W]``, channel ``c*T + t``)
and no tensor above rank 4 is ever formed. Submodule names follow the authors' code
(xinghaochen/SqueezeTime, ``mmaction/models/backbones/SqueezeTime.py``) so the released checkpoint's keys load as
they are: ``conv2.param_conv.{1,2,4}``, ``conv2.temporal_conv``, ``conv2.spatial_conv.{short_conv,glo_conv.N,
pos_embed}``, ``downsample.{0,1}``, ``shortcut_conv.{0,1}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import NonNegativeMaxPool2d

# the hidden width of the IOI branch is a constant in the authors' code (it is not tied to the frame count)
IOI_WIDTH = 16


class InterTemporalInteraction(nn.Module):
    """Inter-temporal Object Interaction (IOI) branch of a CTL module (the authors' ``SpatialConv``).

    ``short_conv(x) * sigmoid(conv3x3(relu(bn(conv7x7(relu(bn(conv3x3(x * w))) + pos_embed)))))``:
    a 3x3 conv squeezes the channel-weighted input to 16 maps, a learned positional map restores temporal
    order, a 7x7 conv models object relations, and the result gates a plain 3x3 conv of ``x``.
    ``pos_embed`` ``[1, 16, P, P]`` is resized bilinearly (align_corners) when the feature map is not P x P.
    """

    def __init__(self, dim_in: int, dim_out: int, *, pos_dim: int) -> None:
        super().__init__()
        self.short_conv = nn.Conv2d(dim_in, dim_out, 3, padding=1)
        w = IOI_WIDTH
        self.glo_conv = nn.Sequential(
            nn.Conv2d(dim_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 7, padding=3), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, dim_out, 3, padding=1), nn.Sigmoid())
        self.pos_embed = nn.Parameter(torch.zeros(1, w, pos_dim, pos_dim))
        nn.init.kaiming_normal_(self.pos_embed, mode="fan_out", nonlinearity="relu")

    def position(self, h: int, w: int) -> Tensor:
        """The positional map ``[1, 16, h, w]`` (static sizes: a constant in an exported graph)."""
        if tuple(self.pos_embed.shape[2:]) == (h, w):
            return self.pos_embed
        return F.interpolate(self.pos_embed, size=(h, w), mode="bilinear", align_corners=True)

    def forward(self, x: Tensor, weighted: Tensor) -> Tensor:
        """``x`` ``[N, C, H, W]`` and ``weighted = x * w`` (w the CTL channel weights) -> ``[N, C_out, H, W]``."""
        g = self.glo_conv
        y = g[2](g[1](g[0](weighted)))
        y = y + self.position(int(y.shape[2]), int(y.shape[3]))
        y = g[7](g[6](g[5](g[4](g[3](y)))))
        return self.short_conv(x) * y


class ChannelTimeLearning(nn.Module):
    """Channel-Time Learning (CTL) module (the authors' ``Conv2d``), stride 1.

    Channel weights ``w = sigmoid(fc(relu(bn(fc(avgpool(x))))))`` ``[N, C, 1, 1]`` (the weight computation
    module); output = temporal focus conv ``conv1x1(x * w)`` + IOI branch ``[N, C_out, H, W]``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, pos_dim: int) -> None:
        super().__init__()
        self.param_conv = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, in_channels, 1, bias=False), nn.BatchNorm2d(in_channels), nn.ReLU(),
            nn.Conv2d(in_channels, in_channels, 1, bias=False), nn.Sigmoid())
        self.temporal_conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.spatial_conv = InterTemporalInteraction(in_channels, out_channels, pos_dim=pos_dim)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` -> ``[N, C_out, H, W]``."""
        weighted = x * self.param_conv(x)
        return self.temporal_conv(weighted) + self.spatial_conv(x, weighted)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


def _spatial_downsample(c: int) -> nn.Sequential:
    """Depthwise 2x2 stride-2 conv + BN, applied at the entry of a strided block (before both paths)."""
    return nn.Sequential(nn.Conv2d(c, c, 2, stride=2, groups=c), _bn(c))


class Bottleneck(nn.Module):
    """CTL bottleneck: 1x1 reduce -> CTL -> 1x1 expand (x4), residual; ``[N, C_in, H, W]`` -> ``[N, 4P, H', W']``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1, shortcut: bool = False,
                 pos_dim: int = 7) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = _bn(planes)
        self.conv2 = ChannelTimeLearning(planes, planes, pos_dim=pos_dim)
        self.bn2 = _bn(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = _bn(out)
        self.relu = nn.ReLU()
        self.shortcut_conv = nn.Sequential(nn.Conv2d(in_planes, out, 1, bias=False), _bn(out)) if shortcut else None
        self.downsample = _spatial_downsample(in_planes) if stride != 1 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        residual = x if self.shortcut_conv is None else self.shortcut_conv(x)
        return self.relu(y + residual)


class BasicBlock(nn.Module):
    """CTL basic block: CTL -> CTL, residual (depths 10/18/34); ``[N, C_in, H, W]`` -> ``[N, P, H', W']``.

    As in the authors' code the first CTL keeps the default 7x7 positional map (resized to the feature map).
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1, shortcut: bool = False,
                 pos_dim: int = 7) -> None:
        super().__init__()
        self.conv1 = ChannelTimeLearning(in_planes, planes, pos_dim=7)
        self.bn1 = _bn(planes)
        self.relu = nn.ReLU()
        self.conv2 = ChannelTimeLearning(planes, planes, pos_dim=pos_dim)
        self.bn2 = _bn(planes)
        self.shortcut_conv = nn.Sequential(nn.Conv2d(in_planes, planes, 1, bias=False), _bn(planes)) if shortcut \
            else None
        self.downsample = _spatial_downsample(in_planes) if stride != 1 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        residual = x if self.shortcut_conv is None else self.shortcut_conv(x)
        return self.relu(y + residual)


@dataclass(frozen=True)
class TrunkSpec:
    """A ResNet depth of the authors' ``generate_model``: block type and blocks per stage."""

    block: type[Bottleneck] | type[BasicBlock]
    layers: tuple[int, int, int, int]


DEPTHS: dict[int, TrunkSpec] = {
    10: TrunkSpec(BasicBlock, (1, 1, 1, 1)),
    18: TrunkSpec(BasicBlock, (2, 2, 2, 2)),
    34: TrunkSpec(BasicBlock, (3, 4, 6, 3)),
    50: TrunkSpec(Bottleneck, (3, 4, 6, 3)),
    101: TrunkSpec(Bottleneck, (3, 4, 23, 3)),
    152: TrunkSpec(Bottleneck, (3, 8, 36, 3)),
    200: TrunkSpec(Bottleneck, (3, 24, 36, 3)),
}
BASE_WIDTHS = (64, 128, 256, 512)


def stage_sizes(input_size: int, spatial_stride: Sequence[int]) -> list[int]:
    """Feature-map side of each of the 4 stages for a square ``input_size`` (224 -> [56, 28, 14, 7])."""
    s = (input_size - 1) // 2 + 1  # stem conv 5x5 / 2, pad 2
    s = (s - 1) // 2 + 1  # max pool 3x3 / 2, pad 1
    sizes = []
    for stride in spatial_stride:
        if stride != 1:
            s //= 2  # depthwise 2x2 / 2
        sizes.append(s)
    return sizes


class SqueezeTimeResNet(nn.Module):
    """The time-squeezed trunk (the authors' ``ResNet``): ``[N, 3*T, H, W]`` -> ``[N, C_out, H/32, W/32]``."""

    def __init__(self, *, depth: int = 50, in_channels: int = 48, widen_factor: float = 1.0,
                 spatial_stride: Sequence[int] = (1, 2, 2, 2), pos_dim: Sequence[int] = (56, 28, 14, 7)) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"unsupported SqueezeTime depth {depth}; choose one of {sorted(DEPTHS)}")
        if len(spatial_stride) != 4 or len(pos_dim) != 4:
            raise ValueError("spatial_stride and pos_dim need one value per stage (4)")
        spec = DEPTHS[depth]
        widths = [int(w * widen_factor) for w in BASE_WIDTHS]
        self.in_planes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 5, stride=2, padding=2, bias=False)
        self.bn1 = _bn(widths[0])
        self.relu = nn.ReLU()
        self.maxpool = NonNegativeMaxPool2d(3, stride=2, padding=1)  # after a ReLU
        self.layer1 = self._stage(spec, widths[0], spec.layers[0], spatial_stride[0], pos_dim[0])
        self.layer2 = self._stage(spec, widths[1], spec.layers[1], spatial_stride[1], pos_dim[1])
        self.layer3 = self._stage(spec, widths[2], spec.layers[2], spatial_stride[2], pos_dim[2])
        self.layer4 = self._stage(spec, widths[3], spec.layers[3], spatial_stride[3], pos_dim[3])
        self.out_channels = self.in_planes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _stage(self, spec: TrunkSpec, planes: int, blocks: int, stride: int, pos_dim: int) -> nn.Sequential:
        out = planes * spec.block.expansion
        first = spec.block(self.in_planes, planes, stride=stride, shortcut=self.in_planes != out, pos_dim=pos_dim)
        self.in_planes = out
        return nn.Sequential(first, *(spec.block(out, planes, pos_dim=pos_dim) for _ in range(1, blocks)))

    def forward(self, x: Tensor) -> Tensor:
        """``[N, 3*T, H, W]`` (channel ``c*T + t``) -> ``[N, C_out, h, w]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
