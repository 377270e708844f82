"""ONNX precisions with ONNX Runtime's tools, applied to the float32 model the exporter produced.

* ``fp16``: ``onnxruntime.transformers.float16`` (float16 weights and compute, ``keep_io_types``: the graph's
  inputs and outputs stay float32, cast at the boundary).
* ``int8-dynamic``: ``quantize_dynamic`` (int8 weights per output channel; ConvInteger / MatMulInteger with
  activations quantized per call).
* ``int8``: ``quantize_static`` in QDQ format (int8 weights per output channel, int8 activations from MinMax
  calibration on `stexport.calibration` samples); inputs and outputs stay float32.

The state-update path (`stexport.calibration.state_path`) stays float32 in every precision.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from stexport.calibration import Calibration, Node, state_path
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


def state_nodes(model: Any, spec: IOSpec) -> list[str]:
    nodes = [Node(n.name, n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    keep = state_path(nodes, spec.state_names, [s.output for s in spec.states], lambda op: op in WEIGHTED)
    return sorted(keep)


def _reader(calibration: Calibration, names: list[str]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.samples = iter(calibration.samples)

        def get_next(self) -> dict[str, Any] | None:
            s = next(self.samples, None)
            return None if s is None else {n: s[n] for n in names}

    return Reader()


def convert_precision(model: Any, spec: IOSpec, precision: str, calibration: Calibration | None) -> tuple[Any, dict]:
    """(the model in ``precision``, the manifest's precision details) from a float32 ``ModelProto``."""
    import onnx

    _prepare(model)
    keep = state_nodes(model, spec) if spec.states else []
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
            quantize_static(str(src), str(dst), _reader(calibration, spec.input_names), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=keep, calibrate_method=CalibrationMethod.MinMax)
            details.update(weights="int8 symmetric, per output channel", format="QDQ",
                           activations="int8 asymmetric per tensor, MinMax calibration", compute="int8")
        else:
            raise ValueError(f"onnx has no precision {precision!r}")
        return onnx.load(str(dst)), details
