"""Stream vs recompute, for a causal stream model, in PyTorch eager on both sides (measured side by side).

Without state, every new frame needs the clip forward re-run over a sliding window of the last T frames (cost grows
with T); with state, one ``step`` per new frame (flat). For each T the two are timed in alternation, in rounds whose
window order rotates, and compared per round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from stexport.models import pack_clip

DEFAULT_WINDOWS = (1, 2, 4, 8, 16, 32, 64)
RUNTIME = "pytorch eager, both sides, interleaved"
EXTRAPOLATION_RULE = ("recompute cost at window t: measured / interpolated for t <= max_t; beyond, linear: "
                      "t * ms_per_clip_frame (the per-frame cost at max_t)")


def _ms(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    fn(x)
    return (time.perf_counter() - t0) * 1e3


def stream_vs_recompute(model: torch.nn.Module, frames: torch.Tensor, *, windows: Sequence[int] = DEFAULT_WINDOWS,
                        rounds: int = 3, stream_steps: int = 3, tick: Callable[[int], None] | None = None
                        ) -> dict[str, Any]:
    """Cost per new frame: recompute (clip forward over the last T frames) vs stream (one step, state carried).

    ``frames`` float ``[V, 3, H, W]`` (a looped video: frame i is ``frames[i % V]``). Returns per-T medians (ms per
    new frame), the per-round ratio recompute / stream (median), and ``extrapolation``: the per-frame clip cost at
    the largest T, which `recompute_at` uses beyond it (recomputing the whole of a growing video).
    """
    tick = tick or (lambda n: None)
    v = frames.shape[0]
    layout = str(model.clip_layout)
    rec: dict[int, list[float]] = {t: [] for t in windows}
    st: dict[int, list[float]] = {t: [] for t in windows}
    ratios: dict[int, list[float]] = {t: [] for t in windows}
    errors: dict[int, str] = {}
    state = model.init_state(1)  # type: ignore[operator]
    pos = 0

    def packed(t: int) -> torch.Tensor:
        idx = torch.tensor([(pos - t + 1 + k) % v for k in range(t)])
        return pack_clip(frames[idx].transpose(0, 1).unsqueeze(0).contiguous(), layout).contiguous()

    forward: Callable[[torch.Tensor], torch.Tensor] = model.forward_packed  # type: ignore[assignment]
    with torch.inference_mode():
        for t in windows[:1]:  # warm-up
            forward(packed(t))
            _, state = model.step(frames[0:1], state)  # type: ignore[operator]
        for r in range(rounds):
            order = list(windows[r % len(windows):]) + list(windows[:r % len(windows)])
            for t in order:
                if t in errors:
                    tick(1)
                    continue
                x = packed(t)
                try:
                    rec_ms = _ms(forward, x)
                except Exception as e:  # a model whose clip forward needs a fixed T
                    errors[t] = f"{type(e).__name__}: {e}"
                    tick(1)
                    continue
                steps = []
                for _ in range(stream_steps):
                    f = frames[pos % v:pos % v + 1]
                    t0 = time.perf_counter()
                    _, state = model.step(f, state)  # type: ignore[operator]
                    steps.append((time.perf_counter() - t0) * 1e3)
                    pos += 1
                rec[t].append(rec_ms)
                st[t].append(float(np.median(steps)))
                ratios[t].append(rec_ms / max(st[t][-1], 1e-9))
                tick(1)
    ok = [t for t in windows if rec[t]]
    rec_med = [float(f"{np.median(rec[t]):.4g}") if rec[t] else None for t in windows]
    extrapolation = None
    if ok:
        t_max = max(ok)
        extrapolation = {"max_t": t_max, "ms_per_clip_frame": float(f"{np.median(rec[t_max]) / t_max:.4g}"),
                         "rule": EXTRAPOLATION_RULE}
    return {
        "runtime": RUNTIME,
        "rounds": rounds,
        "windows": list(windows),
        "recompute_ms_per_frame": rec_med,
        "stream_ms_per_frame": [float(f"{np.median(st[t]):.4g}") if st[t] else None for t in windows],
        "recompute_over_stream": [float(f"{np.median(ratios[t]):.4g}") if ratios[t] else None for t in windows],
        "extrapolation": extrapolation,
        "errors": {str(t): e for t, e in errors.items()},
    }


def recompute_at(curve: dict[str, Any], t: int) -> float | None:
    """Recompute cost per new frame for a window of ``t`` frames: measured if ``t`` was a window, interpolated
    between measured windows, and beyond the largest one ``t * ms_per_clip_frame`` (linear: a lower bound when
    the measured curve bends upwards)."""
    pts = [(w, v) for w, v in zip(curve["windows"], curve["recompute_ms_per_frame"]) if v is not None]
    ext = curve.get("extrapolation")
    if not pts or ext is None:
        return None
    if t <= ext["max_t"]:
        return float(f"{np.interp(t, [w for w, _ in pts], [v for _, v in pts]):.4g}")
    return float(f"{t * ext['ms_per_clip_frame']:.4g}")
