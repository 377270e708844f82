"""TFLite precisions with ai-edge-quantizer, applied to the float32 ``.tflite`` that litert-torch wrote.

* ``fp16``: float16 weights of convolutions and fully connected layers (FLOAT_CASTING, weight-only); LiteRT
  dequantizes them to float32, so compute stays float32 and the file halves.
* ``int8-dynamic``: int8 channelwise weights, activations quantized on the fly by the kernels (``dynamic_wi8_afp32``),
  but for the stem: the conv that reads the image stays float32. Its fan-in is a few pixels (27 for a 3x3 RGB stem),
  too few to average out the image's per-call int8 rounding: on the gate's clip, movinet_a0_stream_motion7's clip
  form read a logit SNR of 16.2 dB with a quantized stem (max abs err 0.75 over tol 0.69, failed) and 23.9 dB
  (0.28) with a float stem.
* ``int8``: int8 channelwise weights and int8 activations (``static_wi8_ai8``) whose ranges are the 99.99th
  percentiles of the calibration values (`_percentile_ranges`); the graph's inputs and outputs stay float32
  (quantize / dequantize ops at the boundary) unless ``io="int8"`` (`stexport.targets._tflite_io`).

Buffer states (``StateSpec.kind == "buffer"``: causal-conv and shift buffers) are int8 inside the graph, in their
activation's quantization. The update path of the other states (`stexport.calibration.state_path`: running means,
counters) is left float32 in every precision. Every op stays in one XNNPACK partition: the MoViNet step's integer
op forms (`StepLayout`) avoid the ops XNNPACK has no int8 kernel for.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stexport.calibration import RANGE_PERCENTILE, Calibration, Node, percentile_ranges, state_path
from stexport.manifest import package_version
from stexport.spec import IOSpec

SIGNATURE = "serving_default"
WEIGHTED = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "CONV_3D", "FULLY_CONNECTED", "BATCH_MATMUL",
                      "TRANSPOSE_CONV", "CONV_3D_TRANSPOSE"})


def _name(tensor: Any) -> str:
    n = tensor.name
    return n.decode() if isinstance(n, bytes) else str(n)


#: ops between the image input and the stem's conv that only move its values (`_float_scopes`)
LAYOUT_OPS = frozenset({"RESHAPE", "TRANSPOSE", "PAD", "PADV2", "SQUEEZE", "EXPAND_DIMS"})


def _float_scopes(model: Any, spec: IOSpec) -> tuple[list[str], list[str], list[str]]:
    """ai-edge-quantizer op scopes (``"<output tensor names>;"``) of

    * the state-update path's ops;
    * the other ops that write or read a graph output tensor that ops read too (a state output, TSM's per-segment
      logits). With the graph outputs kept float32, ai-edge-quantizer gives such a reader a float32 input but an
      int8 output (a MEAN over the segment logits computes garbage), and LiteRT's XNNPACK delegate leaves a graph
      output unwritten when a QUANTIZE op reads it; a float32 reader avoids both;
    * the stem: the weighted ops that read the image input through layout ops only."""
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    sig = next(s for s in model.signatureDefs if (s.signatureKey.decode() if isinstance(s.signatureKey, bytes)
                                                     else s.signatureKey) == SIGNATURE)
    sg = model.subgraphs[sig.subgraphIndex]
    by_name = {(t.name.decode() if isinstance(t.name, bytes) else t.name): t.tensorIndex
               for t in list(sig.inputs) + list(sig.outputs)}
    codes = model.operatorCodes

    def op_type(op: Any) -> str:
        name = fu.TFL_OP_CODE_TO_NAME.get(codes[op.opcodeIndex].builtinCode)
        return str(getattr(name, "value", name))

    nodes = [Node(str(i), op_type(op), [str(t) for t in op.inputs if t >= 0], [str(t) for t in op.outputs])
             for i, op in enumerate(sg.operators)]
    kept = [s for s in spec.states if s.kind != "buffer"]  # buffers are carried in their activation's int8
    keep = state_path(nodes, [str(by_name[s.name]) for s in kept], [str(by_name[s.output]) for s in kept],
                      lambda op: op in WEIGHTED)
    graph_outs = {str(by_name[n]) for n in spec.output_names}
    read = {t for n in nodes for t in n.inputs if t in graph_outs}  # graph outputs that ops read too
    readers = {n.name for n in nodes if set(n.inputs) & read or set(n.outputs) & read} - keep
    image = {str(by_name[n]) for n in spec.input_names if n not in spec.state_names}
    stem: set[str] = set()
    for n in nodes:  # (operators are in execution order)
        if set(n.inputs) & image and n.op in LAYOUT_OPS:
            image |= set(n.outputs)
        elif set(n.inputs) & image and n.op in WEIGHTED:
            stem.add(n.name)

    def scopes(ids: set[str]) -> list[str]:
        return [fu.get_op_scope(sg.operators[int(i)], sg.tensors) for i in sorted(ids, key=int)]

    return scopes(keep), scopes(readers), scopes(stem)


def _global_min_max(qsv: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Widen a tensor's range to cover every calibration sample (ai-edge-quantizer's default is a moving average
    of per-sample ranges, weighted 0.95 to the past: the last ~20 samples decide, and a stream's early frames,
    e.g. zero states, fall outside the range)."""
    import numpy as np

    if not qsv:
        return new
    return {**qsv, "min": np.minimum(qsv["min"], new["min"]), "max": np.maximum(qsv["max"], new["max"])}


def _is_flat(lo: Any, hi: Any) -> Any:
    """Whether a calibrated range [lo, hi] (arrays: per tensor or per channel) is constant, to float32 noise."""
    import numpy as np

    return (hi - lo) <= 1e-6 * np.maximum(1.0, np.abs(hi))


def _reader_widths(model: Any, qsvs: dict[str, Any]) -> dict[str, float]:
    """Tensor name -> the widest range among the outputs of the ops (of the float32 flatbuffer ``model``) that read
    it (outputs with a range that is not flat, `_is_flat`): the scale an op's int8 kernel compares that input's
    scale with."""
    import numpy as np

    def width(name: str) -> float | None:
        q = qsvs.get(name)
        if not isinstance(q, dict) or "min" not in q:
            return None
        lo, hi = np.asarray(q["min"]), np.asarray(q["max"])
        return None if np.any(_is_flat(lo, hi)) else float(np.max(hi - lo))

    out: dict[str, float] = {}
    for sg in model.subgraphs:
        names = [_name(t) for t in sg.tensors]
        for op in sg.operators:
            widths = [w for t in op.outputs if t >= 0 and (w := width(names[t])) is not None]
            for t in op.inputs:
                if t >= 0 and widths:
                    out[names[t]] = max(out.get(names[t], 0.0), *widths)
    return out


def _widen_constant_ranges(qsvs: dict[str, Any], reader_widths: dict[str, float]) -> dict[str, Any]:
    """A tensor that was constant over the whole calibration (a ReZero branch whose ``alpha`` is 0, a zero state)
    gets a range around it as wide as its readers' outputs' (`_reader_widths`; [-1, 1] around it where none has
    one) instead of a zero-width one: its values stay exact, and a zero-width scale would put the op reading it
    outside the range of scale ratios that XNNPACK's int8 kernels take (the op would leave the delegate). A fixed
    [-1, 1] did the same for the untrained A0, whose activations are ~1, but not for the untrained online TSM, whose
    activations shrink to ~1e-6 over its depth: two residual ADDs then read a branch at 4e5 times their output's
    scale and ran outside XNNPACK (3 partitions)."""
    import numpy as np

    out = {}
    for name, q in qsvs.items():
        if isinstance(q, dict) and "min" in q and "max" in q:
            lo, hi = np.asarray(q["min"]), np.asarray(q["max"])
            flat = _is_flat(lo, hi)
            if np.any(flat):
                half = reader_widths.get(name, 2.0) / 2
                q = {**q, "min": np.where(flat, np.minimum(lo, 0.0) - half, lo).astype(lo.dtype),
                     "max": np.where(flat, np.maximum(hi, 0.0) + half, hi).astype(hi.dtype)}
        out[name] = q
    return out


def _calibrate(float_model: bytes, recipe: Any, calibration: Calibration) -> dict[str, Any]:
    from ai_edge_quantizer import calibrator, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe)
    calib = calibrator.Calibrator(float_model, num_threads=1, qsv_update_func=_global_min_max)
    calib.calibrate({SIGNATURE: calibration.samples}, manager)
    return dict(calib.get_model_qsvs())


def quantize(path: Path, spec: IOSpec, precision: str, calibration: Calibration | None, *,
             io: str = "float32") -> dict[str, Any]:
    """Rewrite the float32 model at ``path`` in ``precision``; returns the manifest's precision details.
    ``io="int8"`` (precision int8; ``spec``'s frame is raw pixels, `stexport.boundary.raw_frame_spec`): then the
    integer boundary of `stexport.targets._tflite_io`."""
    integer_io = io == "int8"  # (``io`` is reused as a loop variable below)
    from ai_edge_quantizer import qtyping, quantizer, recipe
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

    all_ops = qtyping.TFLOperationName.ALL_SUPPORTED
    q = quantizer.Quantizer(path.read_bytes())
    details: dict[str, Any] = {"tool": f"ai-edge-quantizer {package_version('ai-edge-quantizer')}"}
    if precision == "fp16":
        q.add_weight_only_config(regex=".*", operation_name=all_ops, num_bits=16,
                                 algorithm_key=AlgorithmName.FLOAT_CASTING)
        details.update(weights="float16 (conv, fully connected), dequantized at load", compute="float32")
    elif precision == "int8-dynamic":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        details.update(weights="int8 symmetric, per output channel",
                       compute="int8 x int8 with activations quantized per call (float32 elsewhere)")
    elif precision == "int8":
        q.load_quantization_recipe(recipe.static_wi8_ai8())
        for io in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):  # float32 boundary
            q.update_quantization_recipe(regex=".*", operation_name=io, algorithm_key=AlgorithmName.NO_QUANTIZE)
        details.update(weights="int8 symmetric, per output channel",
                       activations="int8 asymmetric per tensor, ranges from calibration", compute="int8")
    else:
        raise ValueError(f"tflite has no precision {precision!r}")
    float_model = fu.read_model(path.read_bytes())
    state_ops, readers, stem = _float_scopes(float_model, spec)
    scopes = state_ops + (readers if precision == "int8" else stem if precision == "int8-dynamic" else [])
    if scopes:
        q.update_quantization_recipe(regex="^(?:" + "|".join(re.escape(s) for s in scopes) + ")$",
                                     operation_name=all_ops, algorithm_key=AlgorithmName.NO_QUANTIZE)
    details["state_path_float32_ops"] = len(state_ops)
    if precision == "int8":
        details["output_reader_float32_ops"] = len(readers)
    if precision == "int8-dynamic":
        details["stem_float32_ops"] = len(stem)
    result = None
    if q.need_calibration:
        if calibration is None:
            raise ValueError("int8 needs calibration samples")
        result = _calibrate(path.read_bytes(), q.get_quantization_recipe(), calibration)
        from stexport.targets._tflite_io import _signature_tensor_names

        frames = {t for n, t in _signature_tensor_names(spec).items() if n not in spec.state_names}
        narrowed = _percentile_ranges(path.read_bytes(), calibration.samples, result, keep=frames,
                                      keep_outputs=set(spec.result_names))
        # after the narrowing, which would undo it
        result = _widen_constant_ranges(result, _reader_widths(float_model, result))
        details["calibration_ranges"] = (f"the {100 - RANGE_PERCENTILE:g}-{RANGE_PERCENTILE:g} percentiles of every "
                                         f"activation over the calibration ({narrowed} ranges narrowed from the "
                                         "global min/max)")
        if integer_io:
            from stexport.targets._tflite_io import pixel_qsv

            result = pixel_qsv(result, spec)
    quantized = q.quantize(result, enable_progress_bar=False, enable_progress_report=False)
    path.write_bytes(bytes(quantized.quantized_model))
    if integer_io:
        from stexport.targets._tflite_io import integer_boundary

        details["integer_boundary"] = integer_boundary(path, spec)
    return details


def _percentile_ranges(float_model: bytes, samples: Sequence[dict[str, Any]], qsvs: dict[str, Any], *,
                       keep: set[str], keep_outputs: set[str]) -> int:
    """Narrow each activation's calibrated [min, max] (in place) to the `RANGE_PERCENTILE` percentiles of its values
    over the samples (`stexport.calibration.percentile_ranges`), keeping 0 inside. The tensors
    named in ``keep`` (the frame: its range is the preprocessing's, and clipping it would saturate bright pixels)
    and the signature outputs named in ``keep_outputs`` (the logits: their largest values decide top-1, and rare
    frames have them, e.g. an ensemble's first frame, where one member alone answers) keep their full range.
    Returns how many ranges changed."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_content=float_model, experimental_preserve_all_tensors=True,
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    index = {t["name"]: t["index"] for t in it.get_tensor_details()}
    run = it.get_signature_runner(SIGNATURE)
    outputs = run.get_output_details()
    name_of = {i: n for n, i in index.items()}
    keep = keep | {name_of[outputs[o]["index"]] for o in keep_outputs if o in outputs}
    names = [n for n, q in qsvs.items() if n in index and n not in keep and isinstance(q, dict) and "min" in q]
    def tensors(feeds: dict[str, Any]) -> dict[str, Any]:
        run(**feeds)
        return {n: it.get_tensor(index[n]) for n in names}

    ranges = percentile_ranges((tensors(f) for f in samples), names, len(samples))
    changed = 0
    for n in names:
        q = qsvs[n]
        lo, hi = ranges[n]
        new_lo = np.maximum(np.asarray(q["min"]), lo).astype(np.asarray(q["min"]).dtype)
        new_hi = np.minimum(np.asarray(q["max"]), hi).astype(np.asarray(q["max"]).dtype)
        if np.any(new_lo != q["min"]) or np.any(new_hi != q["max"]):
            qsvs[n] = {**q, "min": new_lo, "max": new_hi}
            changed += 1
    return changed
