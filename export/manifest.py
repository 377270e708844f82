"""``manifest.json`` (what an app needs to run the artifact) and ``golden.json`` (steps it can replay)."""

from __future__ import annotations

import base64
import datetime as _dt
import platform
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from stexport.models._registry import ModelEntry, Preprocess
from stexport.parity import Trace
from stexport.spec import IOSpec

SCHEMA_VERSION = 1
GOLDEN_STEPS = 3


def package_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None when it is not installed."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def tool_versions() -> dict[str, str | None]:
    dists = ("stexport", "torch", "onnx", "onnxscript", "onnxruntime", "onnxsim", "litert-torch", "ai-edge-litert",
             "ai-edge-quantizer", "coremltools", "executorch", "torchao", "numpy")
    return {"python": platform.python_version(), **{d: package_version(d) for d in dists}}


def model_facts(model: Any, entry: ModelEntry | None, *, name: str, form: str) -> dict[str, Any]:
    t = int(model.num_frames)
    facts: dict[str, Any] = {
        "name": name,
        "family": entry.family if entry else type(model).__name__,
        "origin": entry.origin if entry else "user module",
        "dataset": entry.dataset if entry else None,
        "description": entry.description if entry else "",
        "num_classes": int(model.num_classes),
        "num_frames": t,
        "input_size": list(model.frame_size()),
        "streaming": bool(model.streaming),
        "clip_layout": str(model.clip_layout),
    }
    if form == "stream" and not model.streaming:
        facts["stream_note"] = (f"clip model run as a ring buffer of the last {t} frames: every step costs one full "
                                f"{t}-frame clip; logits are those of the window ending at the current frame "
                                "(zero frames before the first)")
    facts["frames_per_step"] = 1 if form == "stream" else t
    facts["clips_per_step"] = 0 if model.streaming and form == "stream" else 1
    for opt in ("pool_window",):
        if hasattr(model, opt):
            facts[opt] = getattr(model, opt)
    return facts


def preprocessing(pre: Preprocess, *, io: str = "float32") -> dict[str, Any]:
    d = asdict(pre)
    d["size"] = list(pre.size)
    d["formula"] = "x = (rgb_u8 / 255 * (value_range[1] - value_range[0]) + value_range[0] - mean[c]) / std[c]"
    d["tensor_layout"] = "NCHW float32"
    if io == "int8":  # the formula runs inside the graph: an app feeds the resized, cropped RGB bytes
        d["tensor_layout"] = "NHWC uint8"
        d["folded_into_graph"] = True
    return d


def build_manifest(*, model_info: dict[str, Any], pre: Preprocess, spec: IOSpec, target: str, artifact: str,
                   artifact_bytes: int, artifact_sha256: str, precision: str, converter: dict[str, Any],
                   parity: dict[str, Any], labels: str, export_seconds: float,
                   precision_details: dict[str, Any] | None = None, io: str = "float32") -> dict[str, Any]:
    """The manifest. ``io``: the boundary (``"int8"``: a uint8 NHWC frame with the preprocessing folded into the
    graph, int8 buffer states with ``quantization`` and ``init: "zero_point"``; `stexport.boundary`)."""
    manifest: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "model": model_info,
        "form": spec.form,
        "target": target,
        "artifact": {"file": artifact, "bytes": artifact_bytes, "sha256": artifact_sha256,
                     "export_seconds": round(export_seconds, 2)},
        "precision": precision,
        "precision_details": precision_details or {"name": precision},
        "io": io,
        "preprocessing": preprocessing(pre, io=io),
        "labels": {"file": "labels.txt", "source": labels, "count": model_info["num_classes"]},
        "inputs": [t.to_json() for t in spec.inputs],
        "outputs": [t.to_json() for t in spec.outputs],
        "states": [s.to_json() for s in spec.states],
        "input_order": spec.input_names,
        "output_order": spec.output_names,
        "converter": converter,
        "versions": tool_versions(),
        "parity": parity,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if target == "tflite":
        manifest["tflite"] = {"signature": "serving_default"}
    if target == "executorch":
        manifest["executorch"] = {"method": "forward", "inputs": "positional, input_order",
                                  "outputs": "output_order"}
    return manifest


def _summary(a: np.ndarray) -> dict[str, Any]:
    flat = a.reshape(-1).astype(np.float64)
    idx = np.unique(np.linspace(0, flat.size - 1, 8).round().astype(np.int64))
    return {"shape": list(a.shape), "sum": float(flat.sum()), "abs_max": float(np.abs(flat).max(initial=0.0)),
            "samples": {"index": idx.tolist(), "values": flat[idx].tolist()}}


def build_golden(*, frames_u8: np.ndarray, spec: IOSpec, trace: Trace, labels: list[str], steps: int = GOLDEN_STEPS
                 ) -> dict[str, Any]:
    """The first ``steps`` steps of the PyTorch reference run: raw frames (uint8 RGB HWC, base64), summaries of the
    preprocessed input and of every state, and the full expected logits with top-5 labels."""
    n = min(steps, len(trace.outputs))
    per_step_frames = 1 if spec.form == "stream" else frames_u8.shape[0]
    feed = "frame [1, H, W, 3] uint8: these bytes as they are (the preprocessing is in the graph)" \
        if spec.inputs[0].dtype == "uint8" else None
    out_steps = []
    for i in range(n):
        raw = frames_u8[i * per_step_frames:(i + 1) * per_step_frames]
        logits = trace.outputs[i]["logits"][0].astype(np.float64)
        top = np.argsort(-logits)[:5]
        out_steps.append({
            "frames_u8_b64": [base64.b64encode(f.tobytes()).decode("ascii") for f in raw],
            "input_summary": {k: _summary(v) for k, v in trace.inputs[i].items() if k in ("frame", "clip")},
            "state_in_summary": {s.name: _summary(trace.inputs[i][s.name]) for s in spec.states},
            "logits": logits.tolist(),
            "top5": [{"index": int(j), "label": labels[j] if j < len(labels) else str(j), "logit": float(logits[j])}
                     for j in top],
            "state_out_summary": {s.output: _summary(trace.outputs[i][s.output]) for s in spec.states},
        })
    return {
        "schema_version": SCHEMA_VERSION,
        "frame_format": {"dtype": "uint8", "layout": "HWC", "channels": "RGB",
                         "height": int(frames_u8.shape[1]), "width": int(frames_u8.shape[2]),
                         **({"feed": feed} if feed else {})},
        "frames_per_step": per_step_frames,
        "note": "expected outputs of the PyTorch model; replay the frames through the manifest's preprocessing, "
                "feed each state output back as the next state input, and compare logits (tolerance in manifest "
                "parity.tolerance)",
        "steps": out_steps,
    }
