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

# max abs error on logits per precision (fp32: 1e-4 as the contract says; lower precisions: see issue 10 notes)
LOGIT_TOL = {"fp32": 1e-4, "fp16": 5e-2, "int8-dynamic": 2e-1, "int8": 5e-1}


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
    """Run ``run(feeds) -> outputs`` over ``steps``, starting from zero state and carrying ``*_out`` back."""
    state = {s.name: np.zeros(s.shape, np.float32) for s in spec.states}
    trace = Trace([], [])
    for step in steps:
        feeds = {**step, **state}
        out = run(feeds)
        trace.inputs.append(feeds)
        trace.outputs.append({n: np.asarray(out[n]) for n in spec.output_names})
        state = {s.name: np.asarray(out[s.output], np.float32) for s in spec.states}
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
    tol = LOGIT_TOL[precision]
    gated = ["logits", *(t.name for t in spec.outputs if t.role == "extra")]  # e.g. per-segment logits
    spread = float(np.max(np.abs(ref_l - ref_l[:1]))) if len(ref_l) > 1 else float(np.ptp(ref_l))
    report: dict[str, Any] = {
        "steps": len(ref.outputs),
        "tolerance": {"logits_max_abs": tol},
        "max_abs_err": {k: float(f"{v:.3g}") for k, v in errors.items()},
        "logits_max_abs_err_per_step": [float(f"{e:.3g}") for e in per_step],
        "top1_agreement": sum(agree) / len(agree),
        "logits_snr_db": _snr_db(ref_l, got_l),
        "gated_outputs": gated,
        "passed": all(errors[n] <= tol for n in gated),
        # how much the reference logits move across steps (stream) or classes (one clip): the gate is only as
        # sharp as this is large
        "reference_logit_spread": float(f"{spread:.3g}"),
    }
    if spread < 10 * tol:
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
