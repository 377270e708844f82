"""MoViNet A0..A5 architectures as data (from Atze00/MoViNet-pytorch ``movinets/config.py``, which mirrors the
TF Model Garden ``movinet.py`` block specs).

A network is ``conv1`` (3x3, stride 2) -> 5 stages of inverted-bottleneck blocks -> ``conv7`` (1x1) -> pooling ->
``classifier`` (1x1 -> swish -> dropout -> 1x1). Every block's input width is the previous block's output width;
only the first block of a stage may have spatial stride 2. The port's per-block ``padding``/``padding_avg`` entries
are not listed: with ``tf_like=True`` (all released weights) the port ignores them and pads TF-"same".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BlockSpec:
    """One inverted-bottleneck block: ``cin -> expanded (1x1) -> depthwise kt x ks x ks -> SE -> cout (1x1)``."""

    cin: int
    cout: int
    expanded: int
    kernel: tuple[int, int, int]  # (kt, kh, kw)
    stride: int  # spatial stride, 1 or 2


@dataclass(frozen=True)
class MoViNetSpec:
    """One MoViNet variant: stem width, blocks per stage, head widths and the evaluation protocol."""

    name: str
    stem: int
    stages: tuple[tuple[BlockSpec, ...], ...]
    head: int  # conv7 output channels (= pooled feature width)
    hidden: int  # classifier hidden width (dense9)
    input_size: int
    num_frames: int  # frames of the 10 s evaluation clip (TF Model Garden README)
    fps: float

    def blocks(self) -> list[tuple[str, BlockSpec]]:
        """``[("b0_l0", spec), ...]`` in network order (the port's ``blocks`` keys)."""
        return [(f"b{i}_l{j}", b) for i, stage in enumerate(self.stages) for j, b in enumerate(stage)]


# One stage: (output channels, spatial stride of its first block, blocks as (expanded, kt, ks)).
_Stage = tuple[int, int, tuple[tuple[int, int, int], ...]]


def _spec(name: str, *, stem: int, head: int, stages: tuple[_Stage, ...], input_size: int, num_frames: int,
          fps: float, hidden: int = 2048) -> MoViNetSpec:
    built: list[tuple[BlockSpec, ...]] = []
    cin = stem
    for cout, stride, rows in stages:
        blocks = []
        for j, (expanded, kt, ks) in enumerate(rows):
            blocks.append(BlockSpec(cin, cout, expanded, (kt, ks, ks), stride if j == 0 else 1))
            cin = cout
        built.append(tuple(blocks))
    return MoViNetSpec(name, stem, tuple(built), head, hidden, input_size, num_frames, fps)


A0 = _spec("A0", stem=8, head=480, input_size=172, num_frames=50, fps=5, stages=(
    (8, 2, ((24, 1, 5),)),
    (32, 2, ((80, 3, 3), (80, 3, 3), (80, 3, 3))),
    (56, 2, ((184, 5, 3), (112, 3, 3), (184, 3, 3))),
    (56, 1, ((184, 5, 3), (184, 3, 3), (184, 3, 3), (184, 3, 3))),
    (104, 2, ((384, 5, 3), (280, 1, 5), (280, 1, 5), (344, 1, 5))),
))

A1 = _spec("A1", stem=16, head=600, input_size=172, num_frames=50, fps=5, stages=(
    (16, 2, ((40, 1, 5), (40, 3, 3))),
    (40, 2, ((96, 3, 3), (120, 3, 3), (96, 3, 3), (96, 3, 3))),
    (64, 2, ((216, 5, 3), (128, 3, 3), (216, 3, 3), (168, 3, 3), (216, 3, 3))),
    (64, 1, ((216, 5, 3), (216, 3, 3), (216, 3, 3), (128, 3, 3), (128, 1, 5), (216, 3, 3))),
    (136, 2, ((456, 5, 3), (360, 1, 5), (360, 1, 5), (360, 1, 5), (456, 1, 5), (456, 3, 3), (544, 1, 3))),
))

A2 = _spec("A2", stem=16, head=640, input_size=224, num_frames=50, fps=5, stages=(
    (16, 2, ((40, 1, 5), (40, 3, 3), (64, 3, 3))),
    (40, 2, ((96, 3, 3), (120, 3, 3), (96, 3, 3), (96, 3, 3), (120, 3, 3))),
    (72, 2, ((240, 5, 3), (160, 3, 3), (240, 3, 3), (192, 3, 3), (240, 3, 3))),
    (72, 1, ((240, 5, 3), (240, 3, 3), (240, 3, 3), (240, 3, 3), (144, 1, 5), (240, 3, 3))),
    (144, 2, ((480, 5, 3), (384, 1, 5), (384, 1, 5), (480, 1, 5), (480, 1, 5), (480, 3, 3), (576, 1, 3))),
))

A3 = _spec("A3", stem=16, head=744, input_size=256, num_frames=120, fps=12, stages=(
    (16, 2, ((40, 1, 5), (40, 3, 3), (64, 3, 3), (40, 3, 3))),
    (48, 2, ((112, 3, 3), (144, 3, 3), (112, 3, 3), (112, 1, 5), (144, 3, 3), (144, 3, 3))),
    (80, 2, ((240, 5, 3), (152, 3, 3), (240, 3, 3), (192, 3, 3), (240, 3, 3))),
    (88, 1, ((264, 5, 3), (264, 3, 3), (264, 3, 3), (264, 3, 3), (160, 1, 5), (264, 3, 3), (264, 3, 3),
             (264, 3, 3))),
    (168, 2, ((560, 5, 3), (448, 1, 5), (448, 1, 5), (560, 1, 5), (560, 1, 5), (560, 3, 3), (448, 1, 5),
              (448, 1, 5), (560, 3, 3), (672, 1, 3))),
))

A4 = _spec("A4", stem=24, head=856, input_size=290, num_frames=80, fps=8, stages=(
    (24, 2, ((64, 1, 5), (64, 3, 3), (96, 3, 3), (64, 3, 3), (96, 3, 3), (64, 3, 3))),
    (56, 2, ((168, 3, 3), (168, 3, 3), (136, 3, 3), (136, 3, 3), (168, 3, 3), (168, 3, 3), (168, 3, 3),
             (136, 1, 5), (136, 3, 3))),
    (96, 2, ((320, 5, 3), (160, 3, 3), (320, 3, 3), (192, 3, 3), (320, 3, 3), (160, 3, 3), (320, 3, 3),
             (256, 3, 3), (320, 3, 3))),
    (96, 1, ((320, 5, 3), (320, 3, 3), (320, 3, 3), (320, 3, 3), (192, 1, 5), (320, 3, 3), (320, 3, 3),
             (192, 3, 3), (320, 3, 3), (320, 3, 3))),
    (192, 2, ((640, 5, 3), (512, 1, 5), (512, 1, 5), (640, 1, 5), (640, 1, 5), (640, 3, 3), (512, 1, 5),
              (512, 1, 5), (640, 1, 5), (768, 1, 5), (640, 1, 5), (640, 3, 3), (768, 3, 3))),
))

A5 = _spec("A5", stem=24, head=992, input_size=320, num_frames=120, fps=12, stages=(
    (24, 2, ((64, 1, 5), (64, 1, 5), (96, 3, 3), (64, 3, 3), (96, 3, 3), (64, 3, 3))),
    (64, 2, ((192, 5, 3), (152, 3, 3), (152, 3, 3), (152, 3, 3), (192, 3, 3), (192, 3, 3), (192, 3, 3),
             (152, 3, 3), (152, 3, 3), (192, 3, 3), (192, 3, 3))),
    (112, 2, ((376, 5, 3), (224, 3, 3), (376, 3, 3), (376, 3, 3), (296, 3, 3), (376, 3, 3), (224, 3, 3),
              (376, 3, 3), (376, 3, 3), (296, 3, 3), (376, 3, 3), (376, 3, 3), (376, 3, 3))),
    (120, 1, ((376, 5, 3), (376, 3, 3), (376, 3, 3), (376, 3, 3), (224, 1, 5), (376, 3, 3), (376, 3, 3),
              (224, 3, 3), (376, 3, 3), (376, 3, 3), (376, 3, 3))),
    (224, 2, ((744, 5, 3), (744, 3, 3), (600, 1, 5), (600, 1, 5), (744, 1, 5), (744, 1, 5), (744, 3, 3),
              (896, 1, 5), (600, 1, 5), (600, 1, 5), (896, 1, 5), (744, 1, 5), (744, 3, 3), (896, 1, 5),
              (600, 1, 5), (600, 1, 5), (744, 1, 5), (744, 3, 3))),
))

SPECS: dict[str, MoViNetSpec] = {s.name.lower(): s for s in (A0, A1, A2, A3, A4, A5)}


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding ``(before, after)`` of one spatial dim (extra pixel after, like TensorFlow)."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def same_out(size: int, stride: int) -> int:
    """Output size of a TF "SAME" conv/pool: ``ceil(size / stride)``."""
    return -(-size // stride)
