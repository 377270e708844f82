"""ONNX precisions with ONNX Runtime's tools, applied to the float32 model the exporter produced.

* ``fp16``: ``onnxruntime.transformers.float16`` (float16 weights and compute, ``keep_io_types``: the graph's
  inputs and outputs stay float32, cast at the boundary).
* ``int8-dynamic``: ``quantize_dynamic`` (int8 weights per output channel; ConvInteger / MatMulInteger with
  activations quantized per call).
* ``int8``: ``quantize_static`` in QDQ format (int8 weights per output channel, uint8 activations, ranges by the
  percentile rule LiteRT and ExecuTorch use, `stexport.calibration.RANGE_PERCENTILE`, the logits' whole range:
  `activation_ranges`); inputs and outputs stay float32. uint8
  activations x int8 weights is the combination ONNX Runtime's CPU QDQ fusions take on x86 (QLinearConv, QLinearAdd,
  QLinearMul, QLinearConcat, QGemm); with int8 activations its QLinearAdd / QLinearMul selectors decline and half
  the convs stayed ``DequantizeLinear -> Conv -> QuantizeLinear`` in float (measured 16x slower than fp32 on
  movinet_a0_stream, 1 thread). After quantization a ``Mul`` by a positive constant between a ``DequantizeLinear``
  and a ``QuantizeLinear`` (hard-swish's ``/ 6``) is folded into the readers' scale (`fold_constant_muls`): the same
  integers, read at a scale ``c`` times larger. Before it, spatial means become GlobalAveragePool
  (`spatial_means_as_pools`), which ONNX Runtime runs in int8 and NHWC.

The state-update path (`stexport.calibration.state_path`) stays float32 in every precision, but for ``int8``'s
buffer states (``StateSpec.kind == "buffer"``), which are carried in their activation's quantization (their
concatenations and slices are integer ops; the state crosses the boundary as float32), as in the LiteRT export.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from stexport.calibration import RANGE_PERCENTILE, Calibration, Node, percentile_ranges, state_path
from stexport.manifest import package_version
from stexport.spec import IOSpec

WEIGHTED = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "ConvInteger", "MatMulInteger"})


def _unique_names(model: Any) -> None:
    used: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in used:
            node.name = f"{node.name or node.op_type}_{i}"
        used.add(node.name)


def _prepare(model: Any) -> None:
    """In place: Constant nodes become initializers (the quantizers look for weights and biases there), every
    node gets a unique name (the quantizers exclude nodes by name) and onnxsim's value_info goes (the quantizers'
    strict shape inference trips over it after their first rewrite)."""
    import onnx

    keep = []
    for node in model.graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            model.graph.initializer.append(t)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    del model.graph.value_info[:]
    _unique_names(model)


def spatial_means_as_pools(model: Any) -> int:
    """In place: each ``ReduceMean`` over H and W of a 4D tensor becomes ``GlobalAveragePool`` (then ``Flatten``
    where the mean dropped those axes). The same numbers; but ONNX Runtime runs a quantized GlobalAveragePool as
    QLinearGlobalAveragePool, in int8 and in the NHWC layout of the convolutions around it, where a quantized
    ReduceMean stays float32 between a dequantize and a quantize, after a transpose back to NCHW (MoViNet's
    squeeze-excite means). Returns the number rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    rank = {v.name: len(v.type.tensor_type.shape.dim)
            for v in onnx.shape_inference.infer_shapes(model).graph.value_info if v.type.HasField("tensor_type")}
    rank.update({v.name: len(v.type.tensor_type.shape.dim) for v in g.input})
    inits = {i.name: i for i in g.initializer}  # (only a ReduceMean's axes are read: no weight is converted)
    nodes, done = [], 0
    for n in g.node:
        keepdims = next((a.i for a in n.attribute if a.name == "keepdims"), 1)
        axes = (numpy_helper.to_array(inits[n.input[1]])
                if n.op_type == "ReduceMean" and len(n.input) == 2 and n.input[1] in inits else None)
        if axes is None or rank.get(n.input[0]) != 4 or sorted(int(a) % 4 for a in axes.ravel()) != [2, 3]:
            nodes.append(n)
            continue
        pooled = n.output[0] if keepdims else f"{n.output[0]}_pooled"
        nodes.append(helper.make_node("GlobalAveragePool", [n.input[0]], [pooled], name=f"{n.name}_pool"))
        if not keepdims:
            nodes.append(helper.make_node("Flatten", [pooled], [n.output[0]], name=f"{n.name}_flatten", axis=1))
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    return done


def _drop_duplicate_casts(model: Any) -> None:
    """The float16 converter casts a float16 tensor back to float32 once per float32 reader, every time under the
    same output name: keep the first of identical Cast nodes."""
    seen: set[tuple[str, ...]] = set()
    keep = []
    for n in model.graph.node:
        key = (*n.input, "->", *n.output, *(a.SerializeToString().hex() for a in n.attribute))
        if n.op_type == "Cast" and key in seen:
            continue
        seen.add(key)
        keep.append(n)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _drop_cast_round_trips(model: Any) -> int:
    """Remove ``x -> Cast(float16) -> Cast(float32)`` pairs the float16 converter leaves between float32 tensors
    (a state input read by a float32 op, or a float32 op's output written to a float32 state output), so the state
    path never passes through float16. Returns the number of pairs removed."""
    import onnx

    producer = {o: n for n in model.graph.node for o in n.output}
    outputs = {o.name for o in model.graph.output}

    def cast_to(n: Any) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None) if n.op_type == "Cast" else None

    rename: dict[str, str] = {}
    for n in model.graph.node:
        first = producer.get(n.input[0]) if n.op_type == "Cast" else None
        if (first is not None and cast_to(n) == onnx.TensorProto.FLOAT
                and cast_to(first) == onnx.TensorProto.FLOAT16 and n.output[0] not in outputs):
            rename[n.output[0]] = first.input[0]
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            if name in rename:
                n.input[i] = rename[name]
    for n in model.graph.node:  # a graph output written through the round trip: Identity of the float32 tensor
        first = producer.get(n.input[0]) if n.op_type == "Cast" and n.output[0] in outputs else None
        if first is not None and cast_to(n) == onnx.TensorProto.FLOAT and cast_to(first) == onnx.TensorProto.FLOAT16:
            n.op_type, n.input[0] = "Identity", first.input[0]
            del n.attribute[:]
            rename[n.output[0]] = first.input[0]
    used = {i for n in model.graph.node for i in n.input} | outputs
    alive = []
    while True:  # drop casts nobody reads any more
        alive = [n for n in model.graph.node if n.op_type != "Cast" or any(o in used for o in n.output)]
        if len(alive) == len(model.graph.node):
            break
        del model.graph.node[:]
        model.graph.node.extend(alive)
        used = {i for n in model.graph.node for i in n.input} | outputs
    return len(rename)


def state_nodes(model: Any, spec: IOSpec, *, buffers: bool = True) -> list[str]:
    """The state-update path's nodes; ``buffers=False``: the path of the other states only (an int8 export carries
    a buffer in its activation's quantization, as the LiteRT one does)."""
    nodes = [Node(n.name, n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    states = [s for s in spec.states if buffers or s.kind != "buffer"]
    keep = state_path(nodes, [s.name for s in states], [s.output for s in states], lambda op: op in WEIGHTED)
    return sorted(keep)


def fold_constant_muls(model: Any) -> int:
    """In place, on a QDQ model: ``DequantizeLinear(q, s, zp) -> Mul(c) -> QuantizeLinear -> DequantizeLinear...``
    with ``c`` a positive constant scalar becomes ``DequantizeLinear(q, s * c, zp)`` in the readers: one integer
    op fewer per occurrence (hard-swish's ``/ 6``) and one requantization less. Returns the number folded."""
    import numpy as np
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    outputs = {o.name for o in g.output}

    def init(name: str) -> Any:
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def scalar(t: str) -> float | None:
        a = init(t)
        if a is not None:
            return float(a) if a.size == 1 and a.dtype.kind == "f" else None
        p = producer.get(t)
        if p is None or p.op_type != "DequantizeLinear" or len(p.input) < 3:
            return None
        q, sc, zp = init(p.input[0]), init(p.input[1]), init(p.input[2])
        if q is None or sc is None or zp is None or q.size != 1 or sc.size != 1:
            return None
        return float((q.astype(np.float64) - zp.astype(np.float64)) * sc.astype(np.float64))

    dropped: set[int] = set()
    for n in g.node:
        if n.op_type != "Mul" or len(n.input) != 2 or n.output[0] in outputs:
            continue
        for ci, ai in ((1, 0), (0, 1)):
            c, dq = scalar(n.input[ci]), producer.get(n.input[ai])
            if c is None or c <= 0 or dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
                continue
            sc, zp = init(dq.input[1]), init(dq.input[2])
            after = readers.get(n.output[0], [])
            if sc is None or zp is None or sc.size != 1 or len(after) != 1 or after[0].op_type != "QuantizeLinear":
                continue
            q = after[0]
            dqs = readers.get(q.output[0], [])
            zp2 = init(q.input[2]) if len(q.input) > 2 else None
            if (q.output[0] in outputs or not dqs or any(d.op_type != "DequantizeLinear" for d in dqs)
                    or zp2 is None or zp2.dtype != zp.dtype):
                continue
            name = f"{n.name}_folded_scale"
            g.initializer.append(numpy_helper.from_array((sc * np.float32(c)).astype(np.float32), name))
            for d in dqs:
                d.input[0], d.input[1], d.input[2] = dq.input[0], name, dq.input[2]
            dropped.update({id(n), id(q)})
            break
    _drop_unread(model, keep_ids=lambda n: id(n) not in dropped)
    return len(dropped) // 2


def _drop_unread(model: Any, keep_ids: Any = None) -> None:
    """Remove the nodes ``keep_ids`` rejects, then nodes and initializers that nothing reads."""
    g = model.graph
    nodes = [n for n in g.node if keep_ids is None or keep_ids(n)]
    outputs = {o.name for o in g.output}
    while True:
        used = {t for n in nodes for t in n.input} | outputs
        alive = [n for n in nodes if any(o in used for o in n.output)]
        if len(alive) == len(nodes):
            break
        nodes = alive
    del g.node[:]
    g.node.extend(nodes)
    used = {t for n in nodes for t in n.input}
    inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(inits)


QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: op types in a DequantizeLinear -> op -> QuantizeLinear unit that ONNX Runtime's CPU provider runs in integers
#: (its QDQ selector-action fusions: QLinear* / QGemm / MatMulInteger ops, or the Q/DQ pair dropped around a
#: data-movement op; Clip and Relu are folded into the QuantizeLinear range)
ORT_INT8 = frozenset({"Conv", "Gemm", "MatMul", "Add", "Mul", "Concat", "Sigmoid", "LeakyRelu", "Softmax",
                      "AveragePool", "GlobalAveragePool", "MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
                      "Flatten", "Slice", "Gather", "Resize", "Where", "Split", "Clip", "Relu", "ArgMax"})
SHAPE_ONLY = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Shape", "Transpose"})


def float_ops(model: Any, keep: list[str]) -> dict[str, dict[str, Any]]:
    """The op types that compute in float32 in a QDQ model (an op whose activation inputs do not all come from
    ``DequantizeLinear``, or whose outputs do not all go to ``QuantizeLinear``), with how many and why."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[Any]] = {}
    for n in g.node:
        for t in n.input:
            readers.setdefault(t, []).append(n)
    kept = set(keep)
    out: dict[str, dict[str, Any]] = {}
    for n in g.node:
        if n.op_type in QDQ:
            continue
        ins = [t for t in n.input if t and t not in inits]
        quant_in = all(producer.get(t) is not None and producer[t].op_type == "DequantizeLinear" for t in ins)
        quant_out = all(r.op_type == "QuantizeLinear" for o in n.output for r in readers.get(o, [])) and \
            all(readers.get(o) for o in n.output)
        if quant_in and quant_out:
            if n.op_type in ORT_INT8:
                continue
            entry = out.setdefault(n.op_type, {"count": 0, "reason": (
                "quantized in the graph, but ONNX Runtime's CPU provider has no integer kernel (QDQ fusion) for it: "
                "it runs in float32 between DequantizeLinear and QuantizeLinear")})
            entry["count"] += 1
            continue
        if (n.name in kept or any(n.name.startswith(k + "_") for k in kept)) and n.op_type in ("Concat", "Slice"):
            reason = ("state-update path: a buffer's shift (concatenate the new frame, drop the oldest) between "
                      "the float32 state input and output")
        elif n.name in kept or any(n.name.startswith(k + "_") for k in kept):
            reason = ("state-update path: running means, frame count and their rates stay float32 (an int8 "
                      "running mean stops moving once its updates fall under one quantization step)")
        elif n.op_type in SHAPE_ONLY:
            reason = "shape-only op on a float32 tensor"
        else:
            reason = "reads or writes a float32 state-update tensor (its input or output stays float32)"
        entry = out.setdefault(n.op_type, {"count": 0, "reason": reason})
        entry["count"] += 1
    return dict(sorted(out.items()))


def _reader(calibration: Calibration, names: list[str]) -> Any:
    """The samples as ONNX Runtime's data reader."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(calibration.samples)

        def get_next(self) -> dict[str, Any] | None:
            s = next(self.samples, None)
            return None if s is None else {n: s[n] for n in names}

    return Reader()


def activation_ranges(model_path: Path, calibration: Calibration, spec: IOSpec) -> dict[str, list[dict[str, Any]]]:
    """``TensorQuantOverrides`` giving every activation the range LiteRT and ExecuTorch give it: the
    `RANGE_PERCENTILE` percentiles of its values over the calibration (`stexport.calibration.percentile_ranges`),
    0 kept inside. One float32 pass over the samples with every node's float output exposed. Left out,
    so the calibrator's min / max stands: the graph's inputs (the frame: its range is the preprocessing's; the
    states), and its state outputs (a buffer's output is read back as its input next step: with a narrower range
    than the input's, the clipping compounded over a 10,000-frame stream, 1.41 -> 1.82 last / first 100 frames on
    movinet_a0_stream_motion7, against 1.41 -> 1.50 this way). The results (logits, extra) keep their whole range:
    their largest values decide top-1, and rare frames have them (an ensemble's first frame, where one member
    alone answers, had its top logits clipped)."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from stexport.targets._onnx import session_options

    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    g = model.graph
    float_types = {v.name for v in [*g.value_info, *g.output]
                   if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    states = {s.output for s in spec.states}
    exposed = {o.name for o in g.output}
    names = [o for n in g.node for o in n.output if o in float_types and o not in states]
    g.output.extend(v for v in g.value_info if v.name in set(names) - exposed)
    opts = session_options(1)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # (the names stay those quantized)
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    runs = (dict(zip(names, sess.run(names, {i: sample[i] for i in spec.input_names})))
            for sample in calibration.samples)
    ranges = percentile_ranges(runs, names, len(calibration.samples), full=set(spec.result_names))
    return {t: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for t, (lo, hi) in ranges.items()}


#: the largest int32 bias a fused integer Conv / Gemm may be given: its int32 accumulator adds the products to the
#: bias, up to K * 255 * 127 (2^25 for K = 1280), so a bias near 2^31 wraps
BIAS_LIMIT = 2**30
#: ops whose output ONNX Runtime's QDQ quantizer gives its input's scale and zero point
SHARES_INPUT_QUANTIZATION = SHAPE_ONLY | {"Slice", "Pad", "MaxPool", "Gather", "Split"}


def fit_biases(model: Any, ranges: dict[str, list[dict[str, Any]]]) -> int:
    """Widen (in place) the range of each Conv / Gemm input whose narrow range would put the layer's int32 bias
    past `BIAS_LIMIT`: ONNX Runtime quantizes a bias at the input's scale times the weight's, ``b / (s_x * s_w)``,
    and an untrained network's activations can shrink to 1e-7 over its depth (random-init tsm_mobilenetv2: the
    classifier's bias reached 2.16e9 at its input's 0.01-99.99 percentile range, past int32, and its fused QGemm
    returned garbage, SNR -2.7 dB, on 3 of 6 random inits). The range is scaled about 0 (its zero point stays),
    and with it the ranges of the tensors it shares its quantization with (`SHARES_INPUT_QUANTIZATION`, back to
    the op that computes it). Returns how many ranges widened."""
    import numpy as np
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    widened: set[str] = set()
    for n in g.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or n.input[1] not in inits or n.input[2] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        b = np.abs(numpy_helper.to_array(inits[n.input[2]]).astype(np.float64))
        if n.op_type == "Gemm" and not next((a.i for a in n.attribute if a.name == "transB"), 0):
            w = w.T
        w_scale = np.maximum(np.abs(w.reshape(w.shape[0], -1)).max(axis=1) / 127, 1e-30)
        chain, t = [], n.input[0]
        while t in ranges:
            chain.append(t)
            p = producer.get(t)
            if p is None or p.op_type not in SHARES_INPUT_QUANTIZATION:
                break
            t = p.input[0]
        need = 255 * float(np.max(b / (w_scale * BIAS_LIMIT)))  # the narrowest range (rmax - rmin) that fits
        for t in chain:
            r = ranges[t][0]
            f = need / max(float(r["rmax"]) - float(r["rmin"]), 1e-30)
            if f <= 1:
                continue
            ranges[t] = [{"rmin": np.float32(float(r["rmin"]) * f), "rmax": np.float32(float(r["rmax"]) * f)}]
            widened.add(t)
    return len(widened)


def convert_precision(model: Any, spec: IOSpec, precision: str, calibration: Calibration | None) -> tuple[Any, dict]:
    """(the model in ``precision``, the manifest's precision details) from a float32 ``ModelProto``."""
    import onnx

    _prepare(model)
    pools = spatial_means_as_pools(model) if precision == "int8" else 0
    keep = state_nodes(model, spec, buffers=precision != "int8") if spec.states else []
    details: dict[str, Any] = {"tool": f"onnxruntime {package_version('onnxruntime')}",
                               "state_path_float32_ops": len(keep)}
    if precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        out = convert_float_to_float16(model, keep_io_types=True, node_block_list=keep)
        _drop_duplicate_casts(out)
        details["float16_round_trips_removed"] = _drop_cast_round_trips(out)
        _unique_names(out)
        details.update(weights="float16", compute="float16 (state-update path and boundary float32)")
        return out, details
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "quant.onnx"
        onnx.save(model, str(src))
        if precision == "int8-dynamic":
            quantize_dynamic(str(src), str(dst), per_channel=True, weight_type=QuantType.QInt8,
                             nodes_to_exclude=keep)
            details.update(weights="int8 symmetric, per output channel",
                           compute="ConvInteger / MatMulInteger, activations uint8 quantized per call")
        elif precision == "int8":
            if calibration is None:
                raise ValueError("int8 needs calibration samples")
            details["spatial_means_as_pools"] = pools
            ranges = activation_ranges(src, calibration, spec)
            details["ranges_widened_for_biases"] = fit_biases(model, ranges)
            quantize_static(str(src), str(dst), _reader(calibration, spec.input_names), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax,
                            extra_options={"TensorQuantOverrides": ranges})
            out = onnx.load(str(dst))
            folded = fold_constant_muls(out)
            details.update(weights="int8 symmetric, per output channel", format="QDQ",
                           activations=f"uint8 per tensor, ranges at the {100 - RANGE_PERCENTILE:g}-"
                                       f"{RANGE_PERCENTILE:g} percentiles of the calibration ({len(ranges)} "
                                       "tensors; the logits, the boundary's inputs and state outputs: their min "
                                       "and max)",
                           compute="int8 (uint8 activations x int8 weights: ONNX Runtime's x86 QLinear kernels)",
                           constant_muls_folded=folded, float_ops=float_ops(out, keep))
            return out, details
        else:
            raise ValueError(f"onnx has no precision {precision!r}")
        return onnx.load(str(dst)), details
