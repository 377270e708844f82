"""Side-by-side latency: every runtime steps the same inputs, in interleaved rounds, after its own warm-up.

A shared 2-core machine is noisy: a burst of load from elsewhere hits whichever runtime is running. So the runtimes
take turns in short rounds (the order rotates every round), each carrying its own state, and a ratio between two
runtimes is the median of per-round ratios measured minutes apart at most, never across runs.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stexport.streaming import Stepper

Feeds = Callable[[int], dict[str, np.ndarray]]


def summarize(ms: Sequence[float]) -> dict[str, float]:
    """Median, p90, mean, min, max of a list of milliseconds (rounded to 4 significant digits)."""
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {"median_ms": float("nan"), "p90_ms": float("nan"), "mean_ms": float("nan"), "min_ms": float("nan"),
                "max_ms": float("nan")}
    vals = {"median_ms": np.median(a), "p90_ms": np.percentile(a, 90), "mean_ms": a.mean(), "min_ms": a.min(),
            "max_ms": a.max()}
    return {k: float(f"{v:.4g}") for k, v in vals.items()}


@dataclass
class Contender:
    """One runtime under comparison: ``new_stepper()`` starts a stream at zero state (`stexport.streaming`: the
    runtime's own state loop; one clip per step in clip form), and what it measured."""

    name: str
    new_stepper: Callable[[], Stepper]
    times_ms: list[float] = field(default_factory=list)
    round_medians_ms: list[float] = field(default_factory=list)
    max_err_vs_ref: float = 0.0
    compared_steps: int = 0
    error: str | None = None
    loop: str = ""  # the stepper's class: how the state travels between steps (see `stexport.streaming`)
    late_ms: list[float] = field(default_factory=list)  # steps of the last `probe` frames of the video
    probe_ms: list[float] = field(default_factory=list)  # fresh-state steps (frames 0, 1, ...) run beside them


def _step(stepper: Stepper, feeds: dict[str, np.ndarray]) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    logits = stepper.step(feeds)
    return (time.perf_counter() - t0) * 1e3, logits


def interleaved(contenders: Sequence[Contender], feeds_at: Feeds, *, steps: int, warmup: int,
                chunk: int, reference: str | None = "pytorch", probe: int = 0,
                tick: Callable[[int], None] | None = None) -> None:
    """Step every contender over inputs ``feeds_at(0..steps-1)`` in rounds of ``chunk`` steps each.

    Stream form: each contender carries its own state from zero at step 0 (so step ``i`` is frame ``i`` of one
    video for all of them); warm-up runs ``warmup`` steps first on a scratch state. Clip form: one clip per step.
    Fills ``times_ms`` (one per step, in step order), ``round_medians_ms`` and, against the ``reference``
    contender, the max abs logits difference over all steps. ``tick(n)`` reports progress in steps.

    ``probe`` > 0 (stream form): while a contender steps the last ``probe`` frames of the video, it also steps as
    many frames from a fresh zero state (frames 0, 1, ...) right after each round's chunk, so the cost late in the
    video is compared with the cost at its start side by side (``late_ms`` vs ``probe_ms``), not minutes apart.
    """
    tick = tick or (lambda n: None)
    live = list(contenders)
    for c in live:
        try:
            scratch = c.new_stepper()
            c.loop = type(scratch).__name__
            for i in range(warmup):
                _step(scratch, feeds_at(i))
        except Exception as e:  # a runtime that cannot run is reported, the others go on
            c.error = f"{type(e).__name__}: {e}"
        tick(warmup)
    streams = {c.name: c.new_stepper() for c in live if c.error is None}
    probes = {c.name: c.new_stepper() for c in live if c.error is None}
    probe_from = steps - probe if probe > 0 else steps
    ref = next((c for c in live if c.name == reference), None)
    gc_was_enabled = gc.isenabled()
    try:
        for r, start in enumerate(range(0, steps, chunk)):
            stop = min(start + chunk, steps)
            order = live[r % len(live):] + live[:r % len(live)]
            logits: dict[str, list[np.ndarray]] = {}
            gc.collect()
            gc.disable()
            for c in order:
                if c.error is not None:
                    continue
                got, times = [], []
                try:
                    for i in range(start, stop):
                        dt, lg = _step(streams[c.name], feeds_at(i))
                        times.append(dt)
                        got.append(lg)
                except Exception as e:  # a runtime that fails mid-run is reported, the others go on
                    c.error = f"{type(e).__name__}: {e}"
                    continue
                finally:
                    tick(stop - start)
                c.times_ms.extend(times)
                c.round_medians_ms.append(float(np.median(times)))
                logits[c.name] = got
                late = times[max(0, probe_from - start):]
                if late:
                    c.late_ms.extend(late)
                    try:
                        for _ in late:
                            dt, _ = _step(probes[c.name], feeds_at(len(c.probe_ms)))
                            c.probe_ms.append(dt)
                    except Exception as e:
                        c.error = f"{type(e).__name__}: {e}"
                    tick(len(late))
            gc.enable()
            if ref is not None and ref.name in logits:
                for c in live:
                    if c is ref or c.name not in logits:
                        continue
                    err = max(float(np.max(np.abs(a.astype(np.float64) - b))) for a, b in
                              zip(logits[ref.name], logits[c.name]))
                    c.max_err_vs_ref = max(c.max_err_vs_ref, err)
                    c.compared_steps += stop - start
    finally:
        if gc_was_enabled:
            gc.enable()


def speedup_vs(c: Contender, ref: Contender) -> dict[str, Any] | None:
    """``ref`` time / ``c`` time, per round (same inputs, minutes apart at most); median and spread over rounds."""
    n = min(len(c.round_medians_ms), len(ref.round_medians_ms))
    if n == 0:
        return None
    ratios = np.asarray(ref.round_medians_ms[:n]) / np.maximum(np.asarray(c.round_medians_ms[:n]), 1e-9)
    return {"speedup_median": float(f"{np.median(ratios):.4g}"),
            "speedup_p10": float(f"{np.percentile(ratios, 10):.4g}"),
            "speedup_p90": float(f"{np.percentile(ratios, 90):.4g}"), "rounds": n}


def position_curve(c: Contender, *, window: int) -> dict[str, Any] | None:
    """Median step time per window of ``window`` consecutive frames along the video; ``flatness_last_over_first``
    = last window / first window (measured minutes apart), ``late_over_early_interleaved`` = the last frames /
    fresh-state frames 0, 1, ... stepped beside them (see `interleaved`); both about 1 when the state does not grow.
    """
    times_ms = c.times_ms
    n = len(times_ms) // window
    if n == 0:
        return None
    starts = [i * window for i in range(n)]
    med = [float(f"{np.median(times_ms[s:s + window]):.4g}") for s in starts]
    late = float(np.median(c.late_ms) / max(np.median(c.probe_ms), 1e-9)) if c.late_ms and c.probe_ms else None
    return {"window": window, "start_frames": starts, "median_ms": med,
            "flatness_last_over_first": float(f"{med[-1] / max(med[0], 1e-9):.4g}"),
            "late_over_early_interleaved": None if late is None else float(f"{late:.4g}"),
            "late_frames": [len(times_ms) - len(c.late_ms), len(times_ms)] if c.late_ms else None}


def curve_window(steps: int) -> int:
    """100-frame windows for long videos (frames 1-100 vs 9,901-10,000), a tenth of the video for short ones."""
    return 100 if steps >= 1000 else max(1, steps // 10)
