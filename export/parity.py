"""The parity gate: run an exported artifact against PyTorch on the same deterministic input.

Stream form: ``steps`` frames, each side carrying its own state (``<key>_out`` fed back as ``<key>``), compared per
step and per output. Clip form: one clip. Also, in PyTorch alone, that streaming equals the (causal) clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from stexport.spec import GraphModule, IOSpec

# fp32: max abs error on logits, absolute, as the contract says.
LOGIT_TOL = {"fp32": 1e-4}
# Reduced precisions: a logit scale cannot be fixed across models (the fixtures' random-weight Kinetics heads give
# logits of ~0.5, trained motion7 heads ~15), so the gate is scale-free: max abs error <= LOGIT_REL_TOL x the
# largest |logit| of the PyTorch reference over the test steps, and logit SNR >= MIN_SNR_DB.
# Measured (gate input, 16 synthetic frames or one clip) on movinet_a0_stream, tsm_mobilenetv2_online, squeezetime
# and tsm_mobilenetv2 at the fixtures and on the two motion7 models, through onnx / tflite / executorch:
#   fp16          relative error 2.2e-4 .. 9.7e-4, SNR 61.6 .. 72.2 dB
#   int8-dynamic  relative error 0.011 .. 0.063,   SNR 23.1 .. 40.6 dB
#   int8          relative error 0.012 .. 0.085,   SNR 22.0 .. 38.8 dB (128 calibration frames / 8 clips)
# Thresholds: about 2.5-3x the worst relative error, and an SNR floor ~10 dB under the worst SNR.
LOGIT_REL_TOL = {"fp16": 3e-3, "int8-dynamic": 0.15, "int8": 0.2}
MIN_SNR_DB = {"fp16": 50.0, "int8-dynamic": 15.0, "int8": 12.0}


def tolerance(precision: str, ref: np.ndarray) -> dict[str, float]:
    """The gate's thresholds for ``precision`` on reference outputs ``ref``: ``logits_max_abs`` (absolute) and,
    for reduced precisions, ``relative`` (to max |ref|) and ``logits_snr_db_min``."""
    if precision == "fp32":
        return {"logits_max_abs": LOGIT_TOL["fp32"]}
    rel = LOGIT_REL_TOL[precision]
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return {"logits_max_abs": float(f"{rel * scale:.3g}"), "relative": rel, "logits_snr_db_min": MIN_SNR_DB[precision]}


class Runner(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass
class Trace:
    """Inputs and outputs of every step of one run."""

    inputs: list[dict[str, np.ndarray]]
    outputs: list[dict[str, np.ndarray]]


def feeds_for(spec: IOSpec, data: torch.Tensor) -> list[dict[str, np.ndarray]]:
    """Step inputs without state: stream ``data`` [T, 3, H, W] -> one ``frame`` per step; clip ``data`` = the packed
    clip [1, ...] -> one step."""
    if spec.form == "clip":
        return [{"clip": data.numpy()}]
    return [{"frame": data[t:t + 1].contiguous().numpy()} for t in range(data.shape[0])]


def run_loop(run: Any, spec: IOSpec, steps: list[dict[str, np.ndarray]]) -> Trace:
    """Run ``run(feeds) -> outputs`` over ``steps``, starting from zero state (`IOSpec.zero_state`: an integer
    state at its zero point) and carrying ``*_out`` back in each state's dtype."""
    state = spec.zero_state()
    trace = Trace([], [])
    for step in steps:
        feeds = {**step, **state}
        out = run(feeds)
        trace.inputs.append(feeds)
        trace.outputs.append({n: np.asarray(out[n]) for n in spec.output_names})
        state = {s.name: np.asarray(out[s.output], np.dtype(s.dtype)) for s in spec.states}
    return trace


def torch_runner(graph: GraphModule) -> Any:
    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            outs = graph(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
        return {n: o.numpy() for n, o in zip(graph.spec.output_names, outs)}

    return run


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else round(10 * np.log10(max(signal, 1e-30) / noise), 2)


def compare(spec: IOSpec, ref: Trace, got: Trace, *, precision: str) -> dict[str, Any]:
    """Per-output max abs error, per-step logits error, top-1 agreement and logit SNR; ``passed`` by the gate."""
    errors: dict[str, float] = {}
    for name in spec.output_names:
        errors[name] = max(float(np.max(np.abs(r[name].astype(np.float64) - g[name]))) for r, g in
                           zip(ref.outputs, got.outputs))
    per_step = [float(np.max(np.abs(r["logits"].astype(np.float64) - g["logits"])))
                for r, g in zip(ref.outputs, got.outputs)]
    agree = [bool(np.array_equal(np.argmax(r["logits"], -1), np.argmax(g["logits"], -1)))
             for r, g in zip(ref.outputs, got.outputs)]
    ref_l = np.concatenate([r["logits"] for r in ref.outputs])
    got_l = np.concatenate([g["logits"] for g in got.outputs])
    gated = spec.result_names  # logits, then e.g. per-segment logits
    tols = {n: tolerance(precision, np.concatenate([r[n] for r in ref.outputs])) for n in gated}
    tol = tols["logits"]["logits_max_abs"]
    snr = _snr_db(ref_l, got_l)
    snr_ok = snr >= tols["logits"].get("logits_snr_db_min", -np.inf)
    spread = float(np.max(np.abs(ref_l - ref_l[:1]))) if len(ref_l) > 1 else float(np.ptp(ref_l))
    report: dict[str, Any] = {
        "precision": precision,
        "steps": len(ref.outputs),
        "tolerance": tols["logits"],
        "max_abs_err": {k: float(f"{v:.3g}") for k, v in errors.items()},
        "logits_max_abs_err_per_step": [float(f"{e:.3g}") for e in per_step],
        "top1_agreement": sum(agree) / len(agree),
        "logits_snr_db": snr,
        "gated_outputs": gated,
        "passed": bool(snr_ok and all(errors[n] <= tols[n]["logits_max_abs"] for n in gated)),
        # how much the reference logits move across steps (stream) or classes (one clip): the gate is only as
        # sharp as this is large
        "reference_logit_spread": float(f"{spread:.3g}"),
    }
    if len(gated) > 1:
        report["tolerance_per_output"] = {n: tols[n]["logits_max_abs"] for n in gated}
    if spread < (10 if precision == "fp32" else 2) * tol:
        report["warning"] = (f"weak check: the PyTorch logits move by only {spread:.2g} across the test input "
                             "(e.g. untrained parameters); load a real checkpoint for a meaningful gate")
    return report


def stream_vs_clip(model: torch.nn.Module, frames: torch.Tensor) -> dict[str, Any]:
    """PyTorch only: stepping ``frames`` [T, 3, H, W] vs the clip forward over the same frames.

    Causal stream models: the last step's logits equal the causal clip's. Clip models (ring buffer of T frames):
    after exactly T steps the window is the whole clip."""
    n = int(model.num_frames) if not model.streaming else frames.shape[0]  # type: ignore[arg-type]
    frames = frames[:n]
    with torch.no_grad():
        state = model.init_state(1)  # type: ignore[operator]
        for t in range(n):
            logits, state = model.step(frames[t:t + 1], state)  # type: ignore[operator]
        clip = model(frames.transpose(0, 1).unsqueeze(0))
    err = float(torch.max(torch.abs(logits - clip)))
    return {"frames": n, "max_abs_err": float(f"{err:.3g}"), "tolerance": 1e-4, "passed": err <= 1e-4}
