"""Deterministic test frames and the manifest's preprocessing, shared by the parity gate, golden files and apps."""

from __future__ import annotations

import numpy as np
import torch

from stexport.models._registry import Preprocess


def synthetic_frames(count: int, height: int, width: int, *, seed: int = 0) -> np.ndarray:
    """``count`` RGB uint8 frames ``[count, H, W, 3]``: a drifting colour gradient, a moving disc and mild noise,
    so consecutive frames differ the way camera frames do (and a stream that ignores its state is caught)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((count, height, width, 3), np.uint8)
    for t in range(count):
        phase = 0.35 * t
        base = np.stack([
            128 + 100 * np.sin(xx / width * 3.1 + phase),
            128 + 100 * np.cos(yy / height * 2.3 - 0.5 * phase),
            128 + 80 * np.sin((xx + yy) / (width + height) * 4.0 + 0.2 * t),
        ], -1)
        cx = width * (0.2 + 0.6 * ((0.07 * t) % 1.0))
        cy = height * (0.5 + 0.25 * np.sin(0.4 * t))
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < (0.12 * min(height, width)) ** 2
        base[disc] = (240.0, 30.0, 30.0)
        base += rng.normal(0.0, 6.0, base.shape)
        frames[t] = np.clip(base, 0, 255).astype(np.uint8)
    return frames


def preprocess(frames: np.ndarray, pre: Preprocess) -> torch.Tensor:
    """RGB uint8 ``[T, H, W, 3]`` -> float32 ``[T, 3, H, W]`` exactly as the manifest tells an app to do it:
    ``(u8 / 255 * (hi - lo) + lo - mean[c]) / std[c]`` (frames already at the model's size)."""
    lo, hi = pre.value_range
    x = frames.astype(np.float32) / np.float32(255.0) * np.float32(hi - lo) + np.float32(lo)
    x = np.asarray((x - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32), np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
