"""motion7: a procedurally generated video dataset whose label is the MOTION of a shape, not its appearance.

Every clip shows one textured shape (ellipse, box, triangle or cross, striped fill, random colours) over a
textured background (oriented gratings + smooth colour noise), with mild per-frame sensor noise. The label is
how the shape moves:

====  ==============  ===============================================================================
 id    name            motion (per frame; ``size`` = 64 px)
====  ==============  ===============================================================================
 0     move_left       translate -x, 2.5..4 px
 1     move_right      translate +x, 2.5..4 px
 2     move_up         translate -y, 2.5..4 px
 3     move_down       translate +y, 2.5..4 px
 4     rotate          rotate 15..25 degrees, clockwise or counter-clockwise
 5     zoom            scale by exp(+-0.07..0.10), in or out
 6     static          no motion
====  ==============  ===============================================================================

Appearance carries no label information: the shape, texture, colour, size and background distributions are the
same for every class; positions live on a torus (the shape wraps around the frame edges), so the position in any
single frame is uniform whatever the motion, and angles are uniform. (Only the zoom class changes the size over
time, so its per-frame size distribution is slightly wider at the first and last frames; see `clip_geometry`.)
Left/right and up/down are time reversals of each other; rotate, zoom and static map to themselves.

Everything is deterministic: clip ``index`` of ``split`` under ``seed`` is drawn from
``np.random.default_rng([seed, SPLITS[split], index])`` and its label is ``index % 7`` (balanced splits).
Frames are RGB uint8 ``[T, H, W, 3]`` (what a camera delivers; an app can use `motion_clip` as a camera stand-in);
models take them as float ``[0, 1]`` (`to_model_input`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CLASSES: tuple[str, ...] = ("move_left", "move_right", "move_up", "move_down", "rotate", "zoom", "static")
#: label of the time-reversed clip
REVERSED: tuple[int, ...] = (1, 0, 3, 2, 4, 5, 6)
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
SHAPES: tuple[str, ...] = ("ellipse", "box", "triangle", "cross")
DEFAULT_SEED = 0
FRAMES = 8
SIZE = 64
TEST_CLIPS = 700

_DIRECTIONS = {0: (-1.0, 0.0), 1: (1.0, 0.0), 2: (0.0, -1.0), 3: (0.0, 1.0)}


@dataclass(frozen=True)
class ClipGeometry:
    """Per-frame pose of the shape (pixels, radians): ``center [T, 2]`` (x, y, in ``[0, size)``), ``angle [T]``,
    ``radius [T]``; and the clip's ``label`` and ``shape`` kind."""

    label: int
    shape: str
    center: np.ndarray
    angle: np.ndarray
    radius: np.ndarray


def _rng(split: str, index: int, seed: int) -> np.random.Generator:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if index < 0:
        raise ValueError(f"clip index must be >= 0, got {index}")
    return np.random.default_rng([seed, SPLITS[split], index])


def _geometry(rng: np.random.Generator, label: int, *, frames: int, size: int) -> ClipGeometry:
    """Draw the shape's pose for every frame (the label only decides how the pose changes over time)."""
    px = size / 64.0
    tau = np.arange(frames, dtype=np.float64) - (frames - 1) / 2.0  # time relative to the middle frame
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    center_mid = rng.uniform(0.0, size, 2)
    angle_mid = rng.uniform(0.0, 2.0 * np.pi)
    radius_mid = rng.uniform(11.0, 16.0) * px
    speed = rng.uniform(2.5, 4.0) * px
    omega = np.deg2rad(rng.uniform(15.0, 25.0)) * rng.choice((-1.0, 1.0))
    zoom = rng.uniform(0.07, 0.10) * rng.choice((-1.0, 1.0))
    velocity = np.array(_DIRECTIONS.get(label, (0.0, 0.0))) * speed
    center = np.mod(center_mid[None, :] + tau[:, None] * velocity[None, :], size)
    angle = angle_mid + (omega * tau if CLASSES[label] == "rotate" else 0.0 * tau)
    radius = radius_mid * (np.exp(zoom * tau) if CLASSES[label] == "zoom" else np.ones_like(tau))
    return ClipGeometry(label, shape, center, np.mod(angle, 2.0 * np.pi), radius)


def _shape_sdf(kind: str, u: np.ndarray, v: np.ndarray, aspect: float) -> np.ndarray:
    """Signed distance (approximate, in shape units; < 0 inside) of a unit-size shape at local ``(u, v)``."""
    if kind == "ellipse":
        return (np.sqrt(u * u + (v / aspect) ** 2) - 1.0) * aspect
    if kind == "box":
        return np.maximum(np.abs(u) - 0.9, np.abs(v) - 0.9 * aspect)
    if kind == "triangle":  # equilateral, circumradius 1.1
        d = np.full_like(u, -np.inf)
        for a in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            d = np.maximum(d, u * np.cos(a) + v * np.sin(a) - 0.55)
        return d
    if kind == "cross":
        arm = 0.35
        return np.minimum(np.maximum(np.abs(u) - 1.0, np.abs(v) - arm), np.maximum(np.abs(u) - arm, np.abs(v) - 1.0))
    raise ValueError(f"unknown shape {kind!r}")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled uniform noise ``[size, size, 3]`` from a ``cells x cells`` periodic grid."""
    grid = rng.uniform(0.0, 1.0, (cells, cells, 3))
    pos = (np.arange(size) + 0.5) / size * cells - 0.5
    i0 = np.floor(pos).astype(int)
    f = (pos - i0)[:, None]
    i0, i1 = np.mod(i0, cells), np.mod(i0 + 1, cells)
    rows = grid[i0] * (1.0 - f)[:, :, None] + grid[i1] * f[:, :, None]  # [size, cells, 3]
    return rows[:, i0] * (1.0 - f)[None, :, :] + rows[:, i1] * f[None, :, :]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured background ``[size, size, 3]`` in [0, 1]: two oriented gratings over smooth colour noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    tex = np.zeros((size, size))
    for _ in range(2):
        theta = rng.uniform(0.0, np.pi)
        period = rng.uniform(6.0, 20.0) * size / 64.0
        tex += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period
                                              + rng.uniform(0.0, 2 * np.pi))
    tex = 0.5 + 0.25 * tex / 2.0
    col_a, col_b = rng.uniform(0.15, 0.85, 3), rng.uniform(0.15, 0.85, 3)
    base = col_a * tex[..., None] + col_b * (1.0 - tex[..., None])
    noise = _smooth_noise(rng, size, int(rng.integers(3, 7)))
    return 0.7 * base + 0.3 * noise


def _render(rng: np.random.Generator, geo: ClipGeometry, *, size: int) -> np.ndarray:
    """Frames ``[T, size, size, 3]`` uint8 of the shape posed by ``geo`` over a fresh background."""
    t = len(geo.angle)
    bg = _background(rng, size)
    aspect = rng.uniform(0.55, 0.9)
    stripe_dir = rng.uniform(0.0, np.pi)
    stripe_period = rng.uniform(0.45, 0.8)
    stripe_phase = rng.uniform(0.0, 2 * np.pi)
    # stripes between a colour that contrasts with the background and a darker version of it
    strong = rng.uniform(0.6, 1.0, 3)
    weak = strong * rng.uniform(0.25, 0.55)
    col_1, col_2 = (1.0 - strong, 1.0 - weak) if float(bg.mean()) > 0.5 else (strong, weak)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    half = size / 2.0
    dx = np.mod(xx[None] - geo.center[:, 0, None, None] + half, size) - half  # torus: nearest copy
    dy = np.mod(yy[None] - geo.center[:, 1, None, None] + half, size) - half
    cos, sin = np.cos(geo.angle)[:, None, None], np.sin(geo.angle)[:, None, None]
    r = geo.radius[:, None, None]
    u = (cos * dx + sin * dy) / r
    v = (-sin * dx + cos * dy) / r
    alpha = np.clip(0.5 - _shape_sdf(geo.shape, u, v, aspect) * r, 0.0, 1.0)[..., None]
    s = u * np.cos(stripe_dir) + v * np.sin(stripe_dir)
    stripes = (0.5 + 0.5 * np.sin(2 * np.pi * s / stripe_period + stripe_phase))[..., None]
    fill = col_1 * stripes + col_2 * (1.0 - stripes)
    img = bg[None] * (1.0 - alpha) + fill * alpha
    img = img + rng.normal(0.0, 4.0 / 255.0, img.shape)
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8).reshape(t, size, size, 3)


def clip_geometry(index: int, *, split: str = "test", seed: int = DEFAULT_SEED, frames: int = FRAMES,
                  size: int = SIZE) -> ClipGeometry:
    """The pose of the shape in every frame of clip ``index`` (what `motion_clip` renders)."""
    return _geometry(_rng(split, index, seed), index % len(CLASSES), frames=frames, size=size)


def motion_clip(index: int, *, split: str = "test", seed: int = DEFAULT_SEED, frames: int = FRAMES,
                size: int = SIZE) -> tuple[np.ndarray, int]:
    """Clip ``index`` of ``split``: (RGB uint8 frames ``[frames, size, size, 3]``, label ``index % 7``).

    The models are trained on 8-frame clips; longer clips continue the same motion (a zooming shape keeps growing
    or shrinking, so for long streams concatenate clips instead)."""
    rng = _rng(split, index, seed)
    geo = _geometry(rng, index % len(CLASSES), frames=frames, size=size)
    return _render(rng, geo, size=size), geo.label


def motion_clips(indices: range | list[int], *, split: str = "test", seed: int = DEFAULT_SEED,
                 frames: int = FRAMES, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Several clips: (uint8 ``[N, frames, size, size, 3]``, int64 labels ``[N]``)."""
    clips = [motion_clip(i, split=split, seed=seed, frames=frames, size=size) for i in indices]
    return np.stack([c for c, _ in clips]), np.array([y for _, y in clips], np.int64)


def to_model_input(frames: np.ndarray) -> torch.Tensor:
    """RGB uint8 ``[N, T, H, W, 3]`` (or ``[T, H, W, 3]``) -> float32 ``[N, 3, T, H, W]`` in [0, 1]."""
    if frames.ndim == 4:
        frames = frames[None]
    x = torch.from_numpy(np.ascontiguousarray(frames)).to(torch.float32) / 255.0
    return x.permute(0, 4, 1, 2, 3).contiguous()


__all__ = ["CLASSES", "DEFAULT_SEED", "FRAMES", "REVERSED", "SIZE", "SPLITS", "TEST_CLIPS", "ClipGeometry",
           "clip_geometry", "motion_clip", "motion_clips", "to_model_input"]
