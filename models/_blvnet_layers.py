"""bLVNet-TAM building blocks: the Temporal Aggregation Module, the bottleneck, and the Big-Little stages.

Layout conventions (everything is rank 4):

* A clip of ``T`` frames runs as a batch of frames ``[N*T, C, H, W]``, frame ``t`` of clip ``n`` at row ``n*T + t``.
* The TAM sees the same memory as ``[N, T*C, H, W]`` (channel ``t*C + c``), so its shift over time is a
  channel slice plus a concatenation with zeros, never a 5D view.
* The Big-Little routing pairs frames ``(2k, 2k+1)``: the authors send the odd frames (``big_list``) through the
  big branch and the even frames (``little_list``) through the little branch, then copy the fused result back
  onto both frames of the pair. Viewing ``[N*T, C, H, W]`` as ``[N*T/2, 2*C, H, W]`` makes that a channel split
  (`split_pairs`) and a channel concatenation (`duplicate_pairs`): no index lists, no in-place slice assignment.

Submodule names follow the authors' code (IBM/bLVNet-TAM, ``core/models/blvnet_tam_backbone.py``) so the released
checkpoint's keys load as they are: ``tam.{prev,curr,next}``, ``layerK.{big,little,little_e,fusion,tam}``,
``downsample.{0,1,2}`` (an ``AvgPool2d`` occupies index 0 when the block strides), ``b_conv0``, ``l_conv0..2``,
``bl_init``.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ResNet depth -> blocks per stage (the authors' ``blvnet_tam_backbone`` table)
STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (4, 8, 18, 3), 152: (5, 12, 30, 3)}
STEM_WIDTH = 64
STAGE_WIDTHS = (64, 128, 256, 512)  # bottleneck widths; outputs are 4x these


def shift_frames(y: Tensor, offset: int, *, frames: int, channels: int, zeros: str = "like") -> Tensor:
    """``y`` ``[N, T*C, H, W]`` (frame-major, ``T = frames``, ``C = channels``) -> ``z`` with
    ``z[:, t] = y[:, t + offset]``, zero where ``t + offset`` is outside ``[0, T)``. Static slices only. The zeros:
    ``"like"`` a ``zeros_like`` concatenated (the authors' form); ``"pad"`` a constant pad (XNNPACK pads float32);
    ``"constant"`` zeros of a static shape concatenated, a constant once a quantizing export folds it (ExecuTorch
    ran ``zeros_like`` and its concatenation outside its delegate)."""
    if offset == 0:
        return y
    if abs(offset) >= frames:
        return torch.zeros_like(y)
    k = abs(offset) * channels
    keep = (frames - abs(offset)) * channels
    if zeros == "pad":
        return F.pad(y[:, k:], (0, 0, 0, 0, 0, k)) if offset > 0 else F.pad(y[:, :keep], (0, 0, 0, 0, k, 0))
    n, _, h, w = y.shape
    pad = y.new_zeros(n, k, h, w) if zeros == "constant" else torch.zeros_like(y[:, :k])
    if offset > 0:
        return torch.cat([y[:, k:], pad], dim=1)
    return torch.cat([pad, y[:, :keep]], dim=1)


def split_pairs(x: Tensor) -> tuple[Tensor, Tensor]:
    """Frames ``[N*T, C, H, W]`` -> (even frames, odd frames), each ``[N*T/2, C, H, W]`` (the authors'
    ``little_list`` and ``big_list`` for a big-little ratio of 2)."""
    nt, c, h, w = x.shape
    pairs = x.reshape(-1, 2 * c, h, w)
    return pairs[:, :c], pairs[:, c:]


def duplicate_pairs(y: Tensor, *, distinct: bool = False) -> Tensor:
    """``[N*T/2, C, H, W]`` -> ``[N*T, C, H, W]`` with frames ``2k`` and ``2k+1`` both equal to ``y[k]``.
    ``distinct``: the concatenation's second operand is a copy (`_twice`)."""
    _, c, h, w = y.shape
    return _twice(y, dim=1, distinct=distinct).reshape(-1, c, h, w)


def _twice(y: Tensor, *, dim: int, distinct: bool = True) -> Tensor:
    """``y`` concatenated with itself along ``dim``; ``distinct``: with a copy of itself, because ExecuTorch's
    XNNPACK partitioner counts a concatenation's distinct input nodes and leaves ``cat([y, y])`` to a portable
    kernel outside its delegate (the copy runs inside it)."""
    return torch.cat([y, y.clone() if distinct else y], dim=dim)


def upsample_like(big: Tensor, little: Tensor, *, by_concat: bool = False) -> Tensor:
    """Nearest-neighbour resize of ``big`` ``[B, C, h, w]`` to the spatial size of ``little`` ``[B, C', H, W]``
    (the authors' ``F.interpolate(big, little.shape[2:])``; with ``H = 2h`` it is a plain 2x nearest upsample).
    ``by_concat``: that 2x case as rank-4 concatenations and reshapes (`upsample2x_by_concat`), the same values."""
    h, w = big.shape[-2:]
    if by_concat and tuple(little.shape[-2:]) == (2 * h, 2 * w):
        return upsample2x_by_concat(big)
    return F.interpolate(big, size=little.shape[-2:], mode="nearest")


def upsample2x_by_concat(x: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> ``[B, C, 2h, 2w]``, each pixel repeated 2x2 (nearest), by two concatenations of a tensor
    with itself: ops that XNNPACK runs (ExecuTorch's XNNPACK delegate has no nearest resize)."""
    b, c, h, w = x.shape
    y = _twice(x.reshape(b, c * h, w, 1), dim=3).reshape(b, c * h, 1, 2 * w)  # columns doubled
    return _twice(y, dim=2).reshape(b, c, 2 * h, 2 * w)  # rows doubled


class ShortcutPool(nn.AvgPool2d):
    """The strided shortcut's ``AvgPool2d(3, 2, 1)`` over ``channels`` (padding counted: the border windows divide
    by 9). With ``xnnpack_forms`` it runs as a depthwise 3x3 / 2 conv of constant weights 1/9 (the same average up to
    float rounding; the weights are a buffer left out of the state_dict): XNNPACK's average pool leaves the padding
    out of the count, so ExecuTorch ran this pool outside its delegate, as a slow portable kernel."""

    def __init__(self, channels: int) -> None:
        super().__init__(3, stride=2, padding=1)
        self.xnnpack_forms = False
        self.mean_weight: Tensor
        self.register_buffer("mean_weight", torch.full((channels, 1, 3, 3), 1.0 / 9.0), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W]`` -> ``[B, C, ceil(H/2), ceil(W/2)]``."""
        if not self.xnnpack_forms:
            return super().forward(x)
        return F.conv2d(x, self.mean_weight, stride=2, padding=1, groups=x.shape[1])


def _depthwise_1x1(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=1, groups=channels, bias=False)


class TAM(nn.Module):
    """Temporal Aggregation Module: ``out[t] = relu(sum_i w_i * x[t + i - B//2])`` over ``B`` blending frames.

    Each ``w_i`` is a per-channel weight (stored as a depthwise 1x1 conv, applied as a broadcast multiply);
    frames outside the clip count as zeros.
    Non-causal: frame ``t`` reads frame ``t + 1``. Input and output ``[N*T, C, H, W]`` with ``T = num_frames``.
    ``blending_frames=3`` uses the authors' names ``prev`` / ``curr`` / ``next``; other counts use
    ``blending_layers.{i}``.
    """

    def __init__(self, channels: int, num_frames: int, *, blending_frames: int = 3) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.channels = channels
        self.blending_frames = blending_frames
        self.zeros = "like"  # `shift_frames`' ``zeros``
        if blending_frames == 3:
            # registration order follows the authors' (prev, next, curr)
            self.prev = _depthwise_1x1(channels)
            self.next = _depthwise_1x1(channels)
            self.curr = _depthwise_1x1(channels)
            self._branches: tuple[tuple[int, str], ...] = ((-1, "prev"), (0, "curr"), (1, "next"))
        else:
            self.blending_layers = nn.ModuleList(_depthwise_1x1(channels) for _ in range(blending_frames))
            half = blending_frames // 2
            self._branches = tuple((i - half, f"blending_layers.{i}") for i in range(blending_frames))

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[N*T, C, H, W]`` -> ``[N*T, C, H, W]``."""
        _, _, h, w = x.shape
        t, c = self.num_frames, self.channels
        out: Tensor | None = None
        for offset, name in self._branches:
            # a depthwise 1x1 conv without bias is a per-channel scale; multiplying is bit-identical and avoids
            # PyTorch's per-group slow path for grouped convs on CPU
            weight = cast(nn.Conv2d, self.get_submodule(name)).weight
            y = (x * weight.reshape(1, c, 1, 1)).reshape(-1, t * c, h, w)
            y = shift_frames(y, offset, frames=t, channels=c, zeros=self.zeros)
            out = y if out is None else out + y
        assert out is not None
        return F.relu(out).reshape(-1, c, h, w)


class Bottleneck(nn.Module):
    """ResNet bottleneck whose ``planes`` is the OUTPUT width (inner width ``planes // 4``), as in the authors' code.

    With ``tam_frames > 0`` a `TAM` runs first; the shortcut then takes the raw input when there is no
    ``downsample`` but the TAM output when there is one (the authors' order). ``last_relu=False`` drops the final
    ReLU (the last block of a big branch).
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, *, stride: int = 1, downsample: nn.Module | None = None,
                 last_relu: bool = True, tam_frames: int = 0, blending_frames: int = 3) -> None:
        super().__init__()
        mid = planes // self.expansion
        self.conv1 = nn.Conv2d(inplanes, mid, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.last_relu = last_relu
        self.tam = TAM(inplanes, tam_frames, blending_frames=blending_frames) if tam_frames > 0 else None

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[B, inplanes, H, W]`` -> ``[B, planes, H/stride, W/stride]``."""
        residual = x
        if self.tam is not None:
            x = self.tam(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            residual = self.downsample(x)
        out = out + residual
        return self.relu(out) if self.last_relu else out


def make_stage(inplanes: int, planes: int, blocks: int, *, stride: int = 1, last_relu: bool = True,
               tam_frames: int = 0, blending_frames: int = 3) -> nn.Sequential:
    """``blocks`` bottlenecks, the first one striding. The shortcut is ``[AvgPool2d(3, 2, 1)] if stride != 1`` +
    ``[conv1x1, BN] if inplanes != planes`` (None when empty). ``last_relu`` applies to the last block only when
    there are several (a single block always ends with ReLU, as in the authors' ``bLModule._make_layer``)."""
    parts: list[nn.Module] = []
    if stride != 1:
        parts.append(ShortcutPool(inplanes))
    if inplanes != planes:
        parts += [nn.Conv2d(inplanes, planes, kernel_size=1, bias=False), nn.BatchNorm2d(planes)]
    downsample = nn.Sequential(*parts) if parts else None
    layers = [Bottleneck(inplanes, planes, stride=stride, downsample=downsample, tam_frames=tam_frames,
                         blending_frames=blending_frames)]
    for i in range(1, blocks):
        layers.append(Bottleneck(planes, planes, last_relu=last_relu if i == blocks - 1 else True,
                                 tam_frames=tam_frames, blending_frames=blending_frames))
    return nn.Sequential(*layers)


class BigLittleStage(nn.Module):
    """One Big-Little stage (the authors' ``bLModule``), over all ``T`` frames.

    TAM over the ``T`` frames; the odd frames go through the deep ``big`` branch (stride 2, ``blocks - 1``
    bottlenecks), the even frames through the narrow ``little`` branch (full resolution, width / alpha) and
    ``little_e`` (1x1 conv + BN back to full width); the big output is upsampled (nearest) onto the little one,
    summed with it, ReLU'd and fused by one more bottleneck (``fusion``, stride ``stride``); the fused frame is
    copied back onto both frames of its pair.
    ``[N*T, C_in, H, W]`` -> ``[N*T, C_out, H/stride, W/stride]``.
    """

    def __init__(self, in_channels: int, out_channels: int, blocks: int, *, alpha: int, beta: int, stride: int,
                 num_frames: int, blending_frames: int = 3) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.relu = nn.ReLU()
        self.big = make_stage(in_channels, out_channels, blocks - 1, stride=2, last_relu=False)
        self.little = make_stage(in_channels, out_channels // alpha, max(1, blocks // beta - 1))
        self.little_e = nn.Sequential(nn.Conv2d(out_channels // alpha, out_channels, kernel_size=1, bias=False),
                                      nn.BatchNorm2d(out_channels))
        self.fusion = make_stage(out_channels, out_channels, 1, stride=stride)
        self.tam = TAM(in_channels, num_frames, blending_frames=blending_frames)
        self.xnnpack_forms = False  # `upsample_like`'s ``by_concat``, `duplicate_pairs`' ``distinct``

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``[N*T, C_in, H, W]`` (frames of a pair equal, except at the stem input) -> ``[N*T, C_out, ...]``."""
        little_in, big_in = split_pairs(self.tam(x))
        big = self.big(big_in)
        little = self.little_e(self.little(little_in))
        fused = self.fusion(self.relu(upsample_like(big, little, by_concat=self.xnnpack_forms) + little))
        return duplicate_pairs(fused, distinct=self.xnnpack_forms)


class BigLittleBackbone(nn.Module):
    """bLResNet with TAM (the authors' ``bLVNet_TAM_BACKBONE``): frames ``[N*T, 3, H, W]`` -> features
    ``[N*T/2, 2048]`` (one per big frame; ``fc`` is a Dropout, identity in eval, unless ``fc_classes`` is set).

    Stem: conv7x7/2 + BN + ReLU, TAM, then the big frames take one 3x3/2 conv and the little frames a
    3x3 / 3x3/2 / 1x1 path; both are summed, ReLU'd, mixed by a 1x1 conv (``bl_init``) and copied onto the pair.
    Stages 1-3 are `BigLittleStage`; stage 4 is a plain bottleneck stage (each block with a TAM over ``T/2``
    frames) on the big frames only.
    """

    def __init__(self, *, depth: int, alpha: int, beta: int, num_frames: int, blending_frames: int = 3,
                 dropout: float = 0.5, fc_classes: int = 0) -> None:
        super().__init__()
        if num_frames % 2:
            raise ValueError(f"bLVNet-TAM pairs frames (big, little): num_frames must be even, got {num_frames}")
        blocks = STAGE_BLOCKS[depth]
        w0 = STEM_WIDTH
        self.num_frames = num_frames
        self.conv1 = nn.Conv2d(3, w0, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU()
        self.b_conv0 = nn.Conv2d(w0, w0, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn_b0 = nn.BatchNorm2d(w0)
        self.l_conv0 = nn.Conv2d(w0, w0 // alpha, kernel_size=3, padding=1, bias=False)
        self.bn_l0 = nn.BatchNorm2d(w0 // alpha)
        self.l_conv1 = nn.Conv2d(w0 // alpha, w0 // alpha, kernel_size=3, stride=2, padding=1, bias=False)
        self.bn_l1 = nn.BatchNorm2d(w0 // alpha)
        self.l_conv2 = nn.Conv2d(w0 // alpha, w0, kernel_size=1, bias=False)
        self.bn_l2 = nn.BatchNorm2d(w0)
        self.bl_init = nn.Conv2d(w0, w0, kernel_size=1, bias=False)
        self.bn_bl_init = nn.BatchNorm2d(w0)
        self.tam = TAM(w0, num_frames, blending_frames=blending_frames)
        self.xnnpack_forms = False  # `duplicate_pairs`' ``distinct``

        outs = [w * Bottleneck.expansion for w in STAGE_WIDTHS]
        ins = [w0, *outs[:2]]
        strides = (2, 2, 1)
        self.layer1, self.layer2, self.layer3 = (
            BigLittleStage(ins[i], outs[i], blocks[i], alpha=alpha, beta=beta, stride=strides[i],
                           num_frames=num_frames, blending_frames=blending_frames) for i in range(3))
        self.layer4 = make_stage(outs[2], outs[3], blocks[3], stride=2, tam_frames=num_frames // 2,
                                 blending_frames=blending_frames)
        self.gappool = nn.AdaptiveAvgPool2d(1)
        self.fc: nn.Module = nn.Linear(outs[3], fc_classes) if fc_classes else nn.Dropout(p=dropout)
        self.feature_dim = outs[3]

    def stem(self, x: Tensor) -> Tensor:
        """Frames ``[N*T, 3, H, W]`` -> ``[N*T, 64, H/4, W/4]`` (the authors' conv1 + ``_forward_bL_layer0``)."""
        x = self.tam(self.relu(self.bn1(self.conv1(x))))
        little, big = split_pairs(x)
        big = self.bn_b0(self.b_conv0(big))
        little = self.relu(self.bn_l0(self.l_conv0(little)))
        little = self.relu(self.bn_l1(self.l_conv1(little)))
        little = self.bn_l2(self.l_conv2(little))
        y = self.relu(big + little)
        y = self.relu(self.bn_bl_init(self.bl_init(y)))
        return duplicate_pairs(y, distinct=self.xnnpack_forms)

    def forward(self, x: Tensor) -> Tensor:
        """Frames ``[N*T, 3, H, W]`` -> ``[N*T/2, 2048]`` (or ``[N*T/2, fc_classes]``)."""
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        _, big = split_pairs(x)
        x = self.gappool(self.layer4(big))
        return self.fc(x.flatten(1))


def frame_batch(x: Tensor, *, channels: int = 3) -> Tensor:
    """Packed clip ``[N, T*C, H, W]`` (channel ``t*C + c``) -> frames ``[N*T, C, H, W]``."""
    _, _, h, w = x.shape
    return x.reshape(-1, channels, h, w)


def average_frames(logits: Tensor, *, frames: int) -> Tensor:
    """Per-frame logits ``[N*F, K]`` -> clip logits ``[N, K]`` (mean over the ``F`` frames of each clip)."""
    return logits.reshape(-1, frames, logits.shape[-1]).mean(dim=1)


__all__ = ["TAM", "BigLittleBackbone", "BigLittleStage", "Bottleneck", "ShortcutPool", "average_frames",
           "duplicate_pairs", "frame_batch", "make_stage", "shift_frames", "split_pairs", "upsample2x_by_concat",
           "upsample_like"]
