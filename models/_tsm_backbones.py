"""The 2D backbones of TSM, written for this package (no torchvision): MobileNetV2 and ResNet-50.

Module keys equal the authors' (``archs/mobilenet_v2.py``, ``online_demo/mobilenet_v2_tsm.py`` and torchvision's
``resnet50`` as wrapped by ``ops/temporal_shift.py``), so their checkpoints load strictly. Shift sites
(`TemporalShift`) go where TSM puts them ("blockres"):

* MobileNetV2: the first (expansion) conv of every inverted residual block with an identity shortcut and an
  expansion layer: ``features.{3,5,6,8,9,10,12,13,15,16}``.
* ResNet-50: ``conv1`` of every bottleneck (``layerX.Y.conv1``); the shortcut sees the unshifted input.

``site_style="wrap"`` wraps the conv (keys ``....conv.0.net.weight`` / ``....conv1.net.weight``, TSN layout);
``"bare"`` puts a parameter-free site in front of the block's branch (keys unchanged, online-demo layout).
Every forward takes ``(x [B, 3, H, W], io: ShiftIO)`` and returns pooled features ``[B, feature_dim]``: the
reference, with the modules as the authors wrote them. ``step(x, io, layout=...)`` computes the same on folded
weights (`Folding`) in a `StepLayout`: channels-last ``x [B, H, W, 3]`` for LiteRT (no layout transposes in the
graph), or NCHW; it is what the online models' stream step runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from ._layers import NonNegativeMaxPool2d
from ._movinet_layers import StepLayout
from ._tsm_fold import Folding, in_layout
from ._tsm_shift import ShiftAware, ShiftIO, TemporalShift, run_layers

SiteStyle = Literal["wrap", "bare"]


def _conv_bn_relu6(inp: int, oup: int, *, kernel: int, stride: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(inp, oup, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(oup),
            nn.ReLU6()]


def _shift_in_step(bare: TemporalShift | None, first: nn.Module, x: Tensor, io: ShiftIO) -> Tensor:
    """The branch input of a block in ``step``: ``x`` shifted by the block's site (``bare``, or the ``first`` layer
    of the branch when that is a site wrapping the conv, which ``step`` then runs folded), or ``x``."""
    site = bare if bare is not None else first if isinstance(first, TemporalShift) else None
    return io.shift(site, x) if site is not None else x


# ---- MobileNetV2 (width 1.0) ----

@dataclass(frozen=True, kw_only=True)
class MobileNetV2Config:
    """(expansion t, channels c, repeats n, first stride s) per stage, as in the paper / the authors' table."""

    stem: int = 32
    last: int = 1280
    stages: tuple[tuple[int, int, int, int], ...] = (
        (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class InvertedResidual(ShiftAware, Folding):
    """``x + conv(x)`` (identity shortcut) or ``conv(x)``; ``conv`` = [pw, bn, relu6,] dw, bn, relu6, pw, bn."""

    def __init__(self, inp: int, oup: int, *, stride: int, expand: int, halvings: int,
                 site_style: SiteStyle | None, fold_div: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _conv_bn_relu6(inp, hidden, kernel=1, stride=1)
        layers += _conv_bn_relu6(hidden, hidden, kernel=3, stride=stride, groups=hidden)
        layers += [nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.shift: TemporalShift | None = None
        shifted = site_style is not None and expand != 1 and self.use_res_connect
        if shifted and site_style == "wrap":
            layers[0] = TemporalShift(layers[0], channels=inp, halvings=halvings, fold_div=fold_div)
        elif shifted:
            self.shift = TemporalShift(channels=inp, halvings=halvings, fold_div=fold_div)
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor, io: ShiftIO) -> Tensor:
        """``x`` ``[B, inp, H, W]`` -> ``[B, oup, H/stride, W/stride]``."""
        h = self.shift(x, io) if self.shift is not None else x
        h = run_layers(self.conv, h, io)
        return x + h if self.use_res_connect else h

    def fold_runs(self) -> dict[str, Iterable[nn.Module]]:
        return {"conv": self.conv}

    def step(self, x: Tensor, io: ShiftIO, *, layout: StepLayout) -> Tensor:
        """``x`` ``[B, H, W, inp]`` (NHWC shown, or ``layout``) -> ``[B, H/stride, W/stride, oup]``, folded."""
        h = self.run_folded("conv", _shift_in_step(self.shift, self.conv[0], x, io), layout=layout)
        return x + h if self.use_res_connect else h


class MobileNetV2Features(Folding, nn.Sequential):
    """``features``: ``[0]`` the stem (conv s2, BN, ReLU6), the `InvertedResidual` blocks, ``[-1]`` the last 1x1 conv
    (keys ``features.<i>.*``, an `nn.Sequential` as the authors'); ``step`` runs all of it folded."""

    def fold_runs(self) -> dict[str, Iterable[nn.Module]]:
        stem, last = self[0], self[-1]
        assert isinstance(stem, nn.Sequential) and isinstance(last, nn.Sequential)
        return {"stem": stem, "last": last}

    def step(self, x: Tensor, io: ShiftIO, *, layout: StepLayout) -> Tensor:
        """``x`` ``[B, H, W, 3]`` (NHWC shown, or ``layout``) -> spatially averaged features ``[B, C_last]``."""
        layers = list(self)
        x = self.run_folded("stem", x, layout=layout)
        for block in layers[1:-1]:
            assert isinstance(block, InvertedResidual)
            x = block.step(x, io, layout=layout)
        return layout.spatial_mean(self.run_folded("last", x, layout=layout))


def mobilenet_v2_features(*, site_style: SiteStyle | None, fold_div: int = 8,
                          cfg: MobileNetV2Config = MobileNetV2Config()) -> MobileNetV2Features:
    """``features``: stem conv (s2), the inverted residual blocks, the final 1x1 conv to ``cfg.last`` channels."""
    layers: list[nn.Module] = [nn.Sequential(*_conv_bn_relu6(3, cfg.stem, kernel=3, stride=2))]
    inp, halvings = cfg.stem, 1
    for t, c, n, s in cfg.stages:
        for i in range(n):
            stride = s if i == 0 else 1
            layers.append(InvertedResidual(inp, c, stride=stride, expand=t, halvings=halvings,
                                           site_style=site_style, fold_div=fold_div))
            inp, halvings = c, halvings + (stride == 2)
    layers.append(nn.Sequential(*_conv_bn_relu6(inp, cfg.last, kernel=1, stride=1)))
    return MobileNetV2Features(*layers)


def mobilenet_v2_embed(features: nn.Sequential, x: Tensor, io: ShiftIO) -> Tensor:
    """``x`` ``[B, 3, H, W]`` -> spatially averaged features ``[B, 1280]``."""
    return run_layers(features, x, io).mean((2, 3))


class MobileNetV2(ShiftAware):
    """TSN's ``base_model`` for MobileNetV2 (its classifier, a Dropout in TSN, is omitted: identity in eval)."""

    def __init__(self, *, site_style: SiteStyle | None = "wrap", fold_div: int = 8,
                 cfg: MobileNetV2Config = MobileNetV2Config()) -> None:
        super().__init__()
        self.feature_dim = cfg.last
        self.features = mobilenet_v2_features(site_style=site_style, fold_div=fold_div, cfg=cfg)

    def forward(self, x: Tensor, io: ShiftIO) -> Tensor:
        return mobilenet_v2_embed(self.features, x, io)

    def step(self, x: Tensor, io: ShiftIO, *, layout: StepLayout) -> Tensor:
        """``x`` ``[B, H, W, 3]`` (NHWC shown, or ``layout``) -> pooled features ``[B, 1280]``, folded."""
        return self.features.step(x, io, layout=layout)


# ---- ResNet-50 (torchvision layout: stride on the 3x3 conv) ----

@dataclass(frozen=True, kw_only=True)
class ResNetConfig:
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    expansion: int = 4
    stem: int = 64


class Bottleneck(ShiftAware, Folding):
    """``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(shift(x))))))))) + shortcut(x))``."""

    def __init__(self, inp: int, width: int, *, stride: int, expansion: int, halvings: int,
                 site_style: SiteStyle | None, fold_div: int) -> None:
        super().__init__()
        out = width * expansion
        conv1: nn.Module = nn.Conv2d(inp, width, 1, bias=False)
        self.shift: TemporalShift | None = None
        if site_style == "wrap":
            conv1 = TemporalShift(conv1, channels=inp, halvings=halvings, fold_div=fold_div)
        elif site_style == "bare":
            self.shift = TemporalShift(channels=inp, halvings=halvings, fold_div=fold_div)
        self.conv1 = conv1
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or inp != out:
            self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def _branch(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.relu, self.conv2, self.bn2, self.relu, self.conv3, self.bn3]

    def forward(self, x: Tensor, io: ShiftIO) -> Tensor:
        """``x`` ``[B, inp, H, W]`` -> ``[B, width*4, H/stride, W/stride]``."""
        h = self.shift(x, io) if self.shift is not None else x
        h = run_layers(self._branch(), h, io)
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.relu(h + shortcut)

    def fold_runs(self) -> dict[str, Iterable[nn.Module]]:
        runs: dict[str, Iterable[nn.Module]] = {"branch": self._branch()}
        if isinstance(self.downsample, nn.Sequential):
            runs["down"] = self.downsample
        return runs

    def step(self, x: Tensor, io: ShiftIO, *, layout: StepLayout) -> Tensor:
        """``x`` ``[B, H, W, inp]`` (NHWC shown, or ``layout``) -> ``[B, H/stride, W/stride, width*4]``, folded."""
        h = self.run_folded("branch", _shift_in_step(self.shift, self.conv1, x, io), layout=layout)
        shortcut = self.run_folded("down", x, layout=layout) if self.downsample is not None else x
        return F.relu(h + shortcut)


class ResNet(ShiftAware, Folding):
    """TSN's ``base_model`` for ResNet-50 (its ``fc``, a Dropout in TSN, is omitted: identity in eval)."""

    def __init__(self, *, site_style: SiteStyle | None = "wrap", fold_div: int = 8,
                 cfg: ResNetConfig = ResNetConfig()) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, cfg.stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem)
        self.relu = nn.ReLU()
        self.maxpool = NonNegativeMaxPool2d(3, stride=2, padding=1)  # after a ReLU
        inp, halvings = cfg.stem, 2
        for i, (n, width) in enumerate(zip(cfg.blocks, cfg.widths, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(Bottleneck(inp, width, stride=stride, expansion=cfg.expansion, halvings=halvings,
                                         site_style=site_style, fold_div=fold_div))
                inp, halvings = width * cfg.expansion, halvings + (stride == 2)
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = inp
        self.num_stages = len(cfg.blocks)

    def forward(self, x: Tensor, io: ShiftIO) -> Tensor:
        """``x`` ``[B, 3, H, W]`` -> pooled features ``[B, 2048]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.num_stages):
            x = run_layers(getattr(self, f"layer{i + 1}"), x, io)
        return self.avgpool(x).flatten(1)

    def fold_runs(self) -> dict[str, Iterable[nn.Module]]:
        return {"stem": [self.conv1, self.bn1, self.relu]}

    def step(self, x: Tensor, io: ShiftIO, *, layout: StepLayout) -> Tensor:
        """``x`` ``[B, H, W, 3]`` (NHWC shown, or ``layout``) -> pooled features ``[B, 2048]``, folded."""
        pool, p = self.maxpool, self.maxpool.padding
        x = layout.pad(self.run_folded("stem", x, layout=layout), (p, p, p, p))  # zeros: after a ReLU
        x = in_layout(layout, lambda t: F.max_pool2d(t, pool.kernel_size, pool.stride), x)
        for i in range(self.num_stages):
            for block in getattr(self, f"layer{i + 1}"):
                x = block.step(x, io, layout=layout)
        return layout.spatial_mean(x)


def build_backbone(name: str, *, site_style: SiteStyle | None, fold_div: int = 8) -> MobileNetV2 | ResNet:
    if name == "mobilenetv2":
        return MobileNetV2(site_style=site_style, fold_div=fold_div)
    if name == "resnet50":
        return ResNet(site_style=site_style, fold_div=fold_div)
    raise ValueError(f"unknown TSM backbone {name!r}; known: mobilenetv2, resnet50")
