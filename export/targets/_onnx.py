"""ONNX: ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript, opset 18; its optimizer folds
constants), onnxsim where it still removes nodes, ONNX's checker and shape inference, onnxruntime.
Reduced precisions: ONNX Runtime's float16 converter and quantizers (`stexport.targets._onnx_quant`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from stexport.calibration import Calibration
from stexport.spec import GraphModule, IOSpec

#: the opset the exporter writes (ONNX Runtime, onnxruntime-web and ONNX Runtime Mobile run it); no down-conversion
OPSET = 18
EXPORTER = "torch.onnx.export(dynamo=True) (torch.export + onnxscript optimizer)"


def _rename_io(model: Any, spec: IOSpec) -> None:
    """In place: the graph's inputs and outputs carry the contract's names (the exporter's outputs come in the
    order ``GraphModule`` returns them); every reference to a renamed tensor follows."""
    want = {"input": spec.input_names, "output": spec.output_names}
    rename: dict[str, str] = {}
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        got = [v.name for v in values]
        if len(got) != len(want[kind]):
            raise RuntimeError(f"ONNX graph {kind}s {got} do not match the spec's {want[kind]}")
        rename.update({old: new for old, new in zip(got, want[kind]) if old != new})
    if not rename:
        return
    for v in (*model.graph.input, *model.graph.output, *model.graph.value_info, *model.graph.initializer):
        v.name = rename.get(v.name, v.name)
    for node in model.graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        node.output[:] = [rename.get(n, n) for n in node.output]


def export_float32(graph: GraphModule, spec: IOSpec) -> tuple[Any, dict[str, Any]]:
    """The float32 ``ModelProto`` with the contract's names, and the converter facts for the manifest."""
    import onnx
    import onnxsim

    example = spec.example_inputs()
    with torch.no_grad():
        program = torch.onnx.export(graph, tuple(example[n] for n in spec.input_names),
                                    input_names=spec.input_names, output_names=spec.output_names,
                                    opset_version=OPSET, dynamo=True, optimize=True, verify=False,
                                    external_data=False, verbose=False)  # (no progress lines on sys.stdout)
    if program is None:  # (only when writing to a file)
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNXProgram")
    model = program.model_proto
    _rename_io(model, spec)
    exported_nodes = len(model.graph.node)
    simplified, ok = onnxsim.simplify(model)
    helped = bool(ok) and len(simplified.graph.node) < exported_nodes
    if helped:
        model = simplified
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.checker.check_model(model)
    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    if names_in != spec.input_names or names_out != spec.output_names:
        raise RuntimeError(f"ONNX graph names {names_in} -> {names_out} differ from the spec "
                           f"{spec.input_names} -> {spec.output_names}")
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    facts = {"converter": EXPORTER + (" + onnxsim" if helped else ""), "exporter": "torch.export (dynamo)",
             "opset": opset, "torch": torch.__version__, "onnx": onnx.__version__, "onnxsim": onnxsim.__version__,
             "exported_nodes": exported_nodes, "simplified": helped}
    return model, facts


def convert(graph: GraphModule, spec: IOSpec, path: Path, *, precision: str, metadata: dict[str, str],
            calibration: Calibration | None = None) -> dict[str, Any]:
    import onnx

    model, facts = export_float32(graph, spec)
    if precision != "fp32":
        from stexport.targets._onnx_quant import convert_precision

        model, facts["precision"] = convert_precision(model, spec, precision, calibration)
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    facts["nodes"] = len(model.graph.node)
    return facts


_ONNX_DTYPES = {1: "float32", 10: "float16", 11: "float64", 3: "int8", 2: "uint8", 6: "int32", 7: "int64"}


def boundary_dtypes(path: Path, spec: IOSpec) -> dict[str, str]:
    """The graph's input and output element types, by name."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {v.name: _ONNX_DTYPES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))
            for v in list(graph.input) + list(graph.output)}


def session_options(threads: int) -> Any:
    """ONNX Runtime's CPU session options as stexport runs them: ``threads`` intra-op threads, spinning off (it
    stalls small-op graphs on 2 cores)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class Runner:
    """ONNX Runtime on the CPU (`session_options`)."""

    name = "onnxruntime"

    def __init__(self, path: Path, spec: IOSpec, *, threads: int = 1) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.spec = spec
        self.version = ort.__version__

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(self.spec.output_names, {n: feeds[n] for n in self.spec.input_names})
        return dict(zip(self.spec.output_names, outs))

    def stepper(self) -> BindingStepper:
        return BindingStepper(self.session, self.spec)


class BindingStepper:
    """ONNX Runtime ``IOBinding``: the state lives in two sets of ``OrtValue``s, A and B, and two bindings read A
    and write B, or the reverse; steps alternate between them, so the state is never copied. Only the frame is
    bound from numpy and the logits read."""

    def __init__(self, session: Any, spec: IOSpec) -> None:
        import onnxruntime as ort

        self.session, self.spec = session, spec

        def zeros(shape: tuple[int, ...]) -> Any:
            return ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32))

        a, b = ({s.name: zeros(s.shape) for s in spec.states} for _ in range(2))
        self._logits = zeros(next(t for t in spec.outputs if t.name == "logits").shape)
        self._bindings = []
        for src, dst in ((a, b), (b, a)):
            io = session.io_binding()
            for s in spec.states:
                io.bind_ortvalue_input(s.name, src[s.name])
                io.bind_ortvalue_output(s.output, dst[s.name])
            io.bind_ortvalue_output("logits", self._logits)
            for t in spec.outputs:
                if t.name != "logits" and t.role != "state_out":
                    io.bind_output(t.name)
            self._bindings.append((io, dst))
        self._turn = 0

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        io, _ = self._bindings[self._turn]
        for name, value in feeds.items():
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        self.session.run_with_iobinding(io)
        self._turn ^= 1
        return np.array(self._logits.numpy())

    def state(self) -> dict[str, np.ndarray]:
        current = self._bindings[self._turn ^ 1][1]  # what the last step wrote
        return {k: np.array(v.numpy()) for k, v in current.items()}
