"""TFLite integer boundary (``io="int8"``, see `stexport.boundary`): rewrite the full-int8 model's signature so
that ``frame`` is uint8 and every ``"buffer"`` state is int8, with no quantize/dequantize op at those tensors.

ai-edge-quantizer leaves the graph inputs and outputs float32 and puts a QUANTIZE op after each input it quantizes
and a DEQUANTIZE op before each such output. Here:

* ``frame`` (raw pixels, calibrated over exactly [0, 255]: int8 scale 1, zero point -128) becomes a uint8 input
  with scale 1, zero point 0; its QUANTIZE op stays as a uint8 -> int8 requantization (subtracting 128, exact).
* a buffer state's input takes the type and quantization of its QUANTIZE op's output, which is removed; its output
  becomes the int8 tensor its DEQUANTIZE op read (that op is removed when nothing else reads its result). The two
  quantizations must be equal (ai-edge-quantizer gives a buffer's concatenation/slice one scale), so a state fed
  back is exact.
* accumulators and logits stay float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stexport.spec import IOSpec

SIGNATURE = "serving_default"
#: the frame's calibration range: raw pixel values
PIXEL_RANGE = (0.0, 255.0)


def pixel_qsv(qsvs: dict[str, Any], spec: IOSpec) -> dict[str, Any]:
    """Calibration ranges with the raw ``frame`` tensor's range fixed to [0, 255] (int8 scale 1, zero point -128),
    whatever the calibration frames held, so the uint8 -> int8 step is exact."""
    name = _signature_tensor_names(spec)["frame"]
    out = dict(qsvs)
    old = out.get(name) or {}
    shape = np.shape(old.get("min", np.zeros((1, 1, 1, 1), np.float32)))
    out[name] = {**old, "min": np.full(shape, PIXEL_RANGE[0], np.float32),
                 "max": np.full(shape, PIXEL_RANGE[1], np.float32)}
    return out


def _signature_tensor_names(spec: IOSpec) -> dict[str, str]:
    """litert-torch's tensor names for signature inputs: ``serving_default_<name>``."""
    return {n: f"{SIGNATURE}_{n}" for n in spec.input_names}


def integer_boundary(path: Path, spec: IOSpec) -> dict[str, Any]:
    """Rewrite the quantized model at ``path`` in place (see the module docstring); returns what was done."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(path.read_bytes()))
    sig = next(s for s in model.signatureDefs if _text(s.signatureKey) == SIGNATURE)
    sg = model.subgraphs[sig.subgraphIndex]
    ins = {_text(t.name): t for t in sig.inputs}
    outs = {_text(t.name): t for t in sig.outputs}

    def op_name(op: Any) -> str:
        return str(fbu.opcode_to_name(model, op.opcodeIndex))

    def consumers(tensor: int) -> list[Any]:
        return [op for op in sg.operators if tensor in list(op.inputs)]

    def quant(tensor: int) -> tuple[float, int]:
        q = sg.tensors[tensor].quantization
        return float(q.scale[0]), int(q.zeroPoint[0])

    # frame: uint8 pixels, requantized to the int8 activation by the QUANTIZE op already there
    frame = ins["frame"].tensorIndex
    readers = consumers(frame)
    if [op_name(op) for op in readers] != ["QUANTIZE"] or quant(readers[0].outputs[0]) != (1.0, -128):
        raise ValueError(f"the int8 model's frame is read by {[op_name(op) for op in readers]} "
                         f"(expected one QUANTIZE to int8 scale 1, zero point -128)")
    t = sg.tensors[frame]
    t.type = schema.TensorType.UINT8
    t.quantization = _quantization(schema, 1.0, 0)
    done: dict[str, Any] = {"frame": "uint8 NHWC pixels, requantized to int8 in the graph (exact)"}

    dead: list[Any] = []
    for s in spec.states:
        if s.kind != "buffer":
            continue
        src = ins[s.name].tensorIndex
        readers = consumers(src)
        if not readers or any(op_name(op) != "QUANTIZE" for op in readers):
            raise ValueError(f"buffer state {s.name!r} is read by {[op_name(op) for op in readers]}; expected "
                             "QUANTIZE ops only (the buffer is carried in int8)")
        q_in = [quant(op.outputs[0]) for op in readers]
        if len(set(q_in)) != 1:
            raise ValueError(f"buffer state {s.name!r} is quantized with {sorted(set(q_in))}: not one scale")
        for op in readers:  # every reader of the QUANTIZE's result reads the state input itself
            _rewire(sg, op.outputs[0], src)
            dead.append(op)
        sg.tensors[src].type = schema.TensorType.INT8
        sg.tensors[src].quantization = _quantization(schema, *q_in[0])

        dst = outs[s.output].tensorIndex
        writer = next((op for op in sg.operators if dst in list(op.outputs)), None)
        if writer is None or op_name(writer) != "DEQUANTIZE":
            raise ValueError(f"buffer state output {s.output!r} is written by "
                             f"{op_name(writer) if writer else 'nothing'}; expected a DEQUANTIZE")
        q8 = writer.inputs[0]
        if quant(q8) != q_in[0]:
            raise ValueError(f"buffer state {s.name!r} is int8 {q_in[0]} in and {quant(q8)} out (scale, zero "
                             "point); the round trip would not be exact")
        outs[s.output].tensorIndex = q8
        sg.outputs = [q8 if o == dst else o for o in sg.outputs]
        if not consumers(dst):
            dead.append(writer)
        done[s.name] = f"int8 scale {q_in[0][0]:.6g} zero point {q_in[0][1]}"
    kept = [s.name for s in spec.states if s.kind != "buffer"]
    if kept:
        done["accumulators"] = ("float32 at the boundary, as the graph computes them (an int8 running mean would "
                                f"stop moving): {', '.join(kept)}")
    done["logits"] = "float32 (dequantized in the graph)"
    sg.operators = [op for op in sg.operators if all(op is not d for d in dead)]
    path.write_bytes(bytes(fbu.convert_object_to_bytearray(model)))
    return done


def _rewire(sg: Any, old: int, new: int) -> None:
    for op in sg.operators:
        if old in list(op.inputs):
            op.inputs = [new if i == old else i for i in op.inputs]


def _quantization(schema: Any, scale: float, zero_point: int) -> Any:
    q = schema.QuantizationParametersT()
    q.scale, q.zeroPoint = [float(scale)], [int(zero_point)]
    return q


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def boundary_details(path: Path) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Every signature input and output of the artifact: (dtype, ``{"scale", "zero_point"}`` for an integer
    tensor with a single scale, else None), by name; read back with the LiteRT Interpreter."""
    from stexport.targets._tflite import interpreter_class

    runner = interpreter_class()(model_path=str(path)).get_signature_runner(SIGNATURE)
    out: dict[str, tuple[str, dict[str, Any] | None]] = {}
    for name, d in {**runner.get_input_details(), **runner.get_output_details()}.items():
        dtype = np.dtype(d["dtype"]).name
        qp = d.get("quantization_parameters", {})
        scales, zps = qp.get("scales", []), qp.get("zero_points", [])
        quant = None
        if np.issubdtype(np.dtype(dtype), np.integer) and len(scales) == 1:
            quant = {"scale": float(scales[0]), "zero_point": int(zps[0])}
        out[name] = (dtype, quant)
    return out
