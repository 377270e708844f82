"""The model boundary's dtypes (``--io``): ``float32`` (the default contract) or ``int8`` (what NPU delegates take).

``io="int8"`` (tflite, precision int8, stream form):

* ``frame``: uint8 ``[1, H, W, 3]`` RGB, NHWC (the camera's layout), raw pixel values; the manifest's preprocessing
  (value range, mean/std) is folded into the graph (`FoldedPreprocess`), so an app feeds camera bytes.
* ``"buffer"`` states: int8 with exactly their activation's scale and zero point (in == out, a lossless round
  trip); they start at their zero point (``init: "zero_point"``, ``init_value``), the integer that means 0.0.
* ``"accumulator"`` states (running means, frame counts): float32, as the graph computes them (an int8 running mean
  stops moving once its update falls under one quantization step).
* ``logits``: float32 (``K`` values a step; an app takes a softmax of them anyway).

Every dtype, scale and zero point is read back from the artifact into the manifest.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stexport.calibration import Calibration
from stexport.errors import UnsupportedPrecisionError
from stexport.models._registry import Preprocess
from stexport.parity import Trace
from stexport.spec import IOSpec, StateSpec, TensorSpec

IO_CHOICES = ("float32", "int8")
#: where the integer boundary is offered: (target, precision)
INT8_IO = (("tflite", "int8"),)


class UnsupportedIOError(UnsupportedPrecisionError):
    """An ``--io`` choice the target, precision or form does not offer (exit 2)."""


def check_io(io: str, *, target: str, precision: str, form: str | None = None) -> None:
    """Raise `UnsupportedIOError` naming what is supported unless ``io`` is offered here."""
    if io not in IO_CHOICES:
        raise UnsupportedIOError(f"--io {io!r} is not a boundary; choose one of {', '.join(IO_CHOICES)}")
    if io == "float32":
        return
    if (target, precision) not in INT8_IO:
        offered = ", ".join(f"--target {t} --precision {p}" for t, p in INT8_IO)
        raise UnsupportedIOError(f"--io int8 is not available for --target {target} --precision {precision}; "
                                 f"it is offered with {offered} (stream form)")
    if form == "clip":
        raise UnsupportedIOError("--io int8 is offered for stream-form exports (a frame per step), not the clip "
                                 "form; use a stream model or --stream")


class FoldedPreprocess(nn.Module):
    """Raw RGB pixel values ``[N, H, W, 3]`` (float, 0..255) -> the model's frame ``[N, 3, H, W]``:
    ``x = (rgb / 255 * (hi - lo) + lo - mean[c]) / std[c]`` as one multiply-add per channel."""

    scale: Tensor
    shift: Tensor

    def __init__(self, pre: Preprocess) -> None:
        super().__init__()
        lo, hi = pre.value_range
        std = torch.tensor(pre.std, dtype=torch.float32)
        self.register_buffer("scale", ((hi - lo) / 255.0 / std).view(1, 3, 1, 1))
        self.register_buffer("shift", ((lo - torch.tensor(pre.mean, dtype=torch.float32)) / std).view(1, 3, 1, 1))

    def forward(self, rgb: Tensor) -> Tensor:
        return rgb.permute(0, 3, 1, 2) * self.scale + self.shift


def raw_frame_spec(spec: IOSpec) -> IOSpec:
    """``spec`` with ``frame`` as raw pixels, float32 ``[N, H, W, 3]`` NHWC: the graph that is converted and
    calibrated before the boundary is made integer."""
    n, _, h, w = spec.inputs[0].shape
    frame = replace(spec.inputs[0], shape=(n, h, w, 3), layout="NHWC")
    return replace(spec, inputs=(frame, *spec.inputs[1:]))


def raw_pixels(frame: np.ndarray, pre: Preprocess) -> np.ndarray:
    """Undo the preprocessing of a float32 frame ``[N, 3, H, W]`` made from uint8 RGB: its pixel values as float32
    ``[N, H, W, 3]`` (rounded, so exact)."""
    lo, hi = pre.value_range
    mean = np.asarray(pre.mean, np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(pre.std, np.float64).reshape(1, 3, 1, 1)
    rgb = ((frame.astype(np.float64) * std + mean) - lo) / (hi - lo) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.float32).transpose(0, 2, 3, 1).copy()


def raw_calibration(cal: Calibration, pre: Preprocess) -> Calibration:
    """``cal`` with every sample's frame as raw pixels (`raw_frame_spec`)."""
    samples = [{**s, "frame": raw_pixels(s["frame"], pre)} for s in cal.samples]
    return replace(cal, samples=samples)


def integer_spec(spec: IOSpec, read_back: dict[str, tuple[str, dict[str, Any] | None]]) -> IOSpec:
    """The contract of an integer-boundary artifact: ``spec`` (float32, NCHW frame) with the frame uint8 NHWC and
    each input/output's dtype and quantization (``{"scale", "zero_point"}``) as ``read_back`` from the artifact
    (name -> (dtype, quantization or None)); an integer state starts at its zero point."""
    def tensor(t: TensorSpec) -> TensorSpec:
        dtype, quant = read_back[t.name]
        integer = np.issubdtype(np.dtype(dtype), np.integer)
        init = "zero_point" if t.role == "state" and integer else t.init
        shape, layout = ((t.shape[0], t.shape[2], t.shape[3], 3), "NHWC") if t.role == "frame" else \
            (t.shape, t.layout)
        return replace(t, shape=shape, layout=layout, dtype=dtype, init=init, quantization=quant if integer else None)

    def state(s: StateSpec) -> StateSpec:
        dtype, quant = read_back[s.name]
        out_dtype, out_quant = read_back[s.output]
        if (dtype, quant) != (out_dtype, out_quant):
            raise ValueError(f"state {s.name!r} is {dtype} {quant} in and {out_dtype} {out_quant} out; an "
                             "integer state must round-trip with one scale and zero point")
        integer = np.issubdtype(np.dtype(dtype), np.integer)
        return replace(s, dtype=dtype, init="zero_point" if integer else s.init,
                       quantization=quant if integer else None)

    return IOSpec(spec.form, tuple(tensor(t) for t in spec.inputs), tuple(tensor(t) for t in spec.outputs),
                  tuple(state(s) for s in spec.states))


def dequantize(value: np.ndarray, quant: dict[str, Any] | None) -> np.ndarray:
    """An integer tensor's real values, float32 (``scale * (q - zero_point)``); a float tensor as it is."""
    if quant is None:
        return np.asarray(value, np.float32)
    return (float(quant["scale"]) * (np.asarray(value, np.float64) - int(quant["zero_point"]))).astype(np.float32)


def dequantized(trace: Trace, spec: IOSpec) -> Trace:
    """``trace`` with every integer tensor dequantized (what the parity gate compares with PyTorch)."""
    quant = {t.name: t.quantization for t in (*spec.inputs, *spec.outputs) if t.role != "frame"}
    return Trace([{k: dequantize(v, quant.get(k)) for k, v in step.items()} for step in trace.inputs],
                 [{k: dequantize(v, quant.get(k)) for k, v in step.items()} for step in trace.outputs])


def frame_feed(rgb: np.ndarray, spec: IOSpec, pre: Preprocess) -> np.ndarray:
    """The ``frame`` input for uint8 RGB pixels ``[H, W, 3]``: uint8 ``[1, H, W, 3]`` for a uint8 frame input
    (preprocessing folded into the graph), else float32 ``[1, 3, H, W]`` through the manifest's preprocessing."""
    frame = next(t for t in spec.inputs if t.role == "frame" or t.name == "frame")
    if frame.dtype == "uint8":
        return np.ascontiguousarray(rgb[None], np.uint8)
    from stexport.frames import preprocess

    return preprocess(rgb[None], pre).numpy()
