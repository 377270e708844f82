"""Core ML: coremltools ML program (``.mlpackage``), state as ordinary inputs and outputs (runs on iOS 15+).

``fp16``: float16 compute (``compute_precision``) except the state-update path
(`stexport.calibration.state_path`), which stays float32; inputs and outputs stay float32.

Core ML only executes on macOS/iOS: elsewhere the exporter checks the spec (names, shapes, dtypes, metadata)
and `Runner` raises `RuntimeUnavailable`, which the parity gate records as "spec checked, not executed".
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stexport.calibration import Calibration, Node, state_path
from stexport.errors import refuse_passed_through
from stexport.spec import GraphModule, IOSpec, exported_io

WEIGHTED = frozenset({"conv", "conv_transpose", "linear", "matmul"})


class RuntimeUnavailable(RuntimeError):
    pass


#: a file coremltools writes into an .mlpackage converted from torch.export (`convert` removes it)
DEBUG_HANDLE_MAP = "executorch_debug_handle_mapping.json"


def _fp16_selector(spec: IOSpec, kept: set[str]) -> Any:
    """``op_selector`` for FP16ComputePrecision: every op except the state-update path's (named into ``kept``)."""
    cache: dict[int, set[str]] = {}

    def ops_of(block: Any) -> set[str]:
        names = list(getattr(block, "inputs", {}) or {})
        if not all(s.name in names for s in spec.states) or len(block.outputs) != len(spec.output_names):
            return set()
        by_out = dict(zip(spec.output_names, (v.name for v in block.outputs)))
        nodes = []
        for op in block.operations:
            ins: list[str] = []
            for v in op.inputs.values():
                ins.extend(x.name for x in (v if isinstance(v, (list, tuple)) else [v]))
            nodes.append(Node(op.name, op.op_type, ins, [v.name for v in op.outputs]))
        return state_path(nodes, spec.state_names, [by_out[s.output] for s in spec.states],
                          lambda t: t in WEIGHTED)

    def select(op: Any) -> bool:
        block = op.enclosing_block
        if id(block) not in cache:
            cache[id(block)] = ops_of(block)
            kept.update(cache[id(block)])
        return op.name not in cache[id(block)]

    return select


def convert(graph: GraphModule, spec: IOSpec, path: Path, *, precision: str, metadata: dict[str, str],
            calibration: Calibration | None = None) -> dict[str, Any]:
    import coremltools as ct

    if precision not in ("fp32", "fp16"):
        raise ValueError(f"coreml has no precision {precision!r}")
    example = spec.example_inputs()
    args = tuple(example[n] for n in spec.input_names)
    with torch.no_grad():
        program = torch.export.export(graph, args, strict=False).run_decompositions({})
    refuse_passed_through(passed_through(program, spec), "coremltools cannot give an ML program output the name of "
                          "an input it returns as it is")
    kept: set[str] = set()
    compute = (ct.transform.FP16ComputePrecision(op_selector=_fp16_selector(spec, kept)) if precision == "fp16"
               else ct.precision.FLOAT32)
    model = ct.convert(
        program,
        inputs=[ct.TensorType(name=t.name, shape=t.shape, dtype=np.float32) for t in spec.inputs],
        outputs=[ct.TensorType(name=n, dtype=np.float32) for n in spec.output_names],
        convert_to="mlprogram",
        compute_precision=compute,
        minimum_deployment_target=ct.target.iOS15,
    )
    model.user_defined_metadata.update(metadata)
    model.short_description = metadata.get("description", "")
    model.save(str(path))
    # coremltools 9 adds ExecuTorch's debug-handle map to a package converted from torch.export (every handle null
    # here: 0.2 MB for A0) that no Core ML runtime reads and the package's manifest does not list
    (path / DEBUG_HANDLE_MAP).unlink(missing_ok=True)
    check_spec(path, spec)
    facts: dict[str, Any] = {"converter": "coremltools", "coremltools": ct.__version__,
                             "minimum_deployment_target": "iOS15"}
    if precision == "fp16":
        facts["precision"] = {"tool": f"coremltools {ct.__version__} FP16ComputePrecision", "weights": "float16",
                              "compute": "float16 (state-update path and boundary float32)",
                              "state_path_float32_ops": len(kept)}
    return facts


def passed_through(program: torch.export.ExportedProgram, spec: IOSpec) -> dict[str, str]:
    """Output name -> input name for each output of ``program`` that is one of its inputs, returned as it is."""
    inputs, outputs = exported_io(program, spec)
    by_node = {v: k for k, v in inputs.items()}
    return {o: by_node[v] for o, v in outputs.items() if isinstance(v, torch.fx.Node) and v in by_node}


def boundary_dtypes(path: Path, spec: IOSpec) -> dict[str, str]:
    """Feature dtypes of the saved package, by name."""
    import coremltools as ct

    desc = ct.models.MLModel(str(path), skip_model_load=True).get_spec().description
    kinds = ct.proto.FeatureTypes_pb2.ArrayFeatureType
    names = {kinds.FLOAT32: "float32", kinds.FLOAT16: "float16", kinds.DOUBLE: "float64", kinds.INT32: "int32"}
    return {f.name: names.get(f.type.multiArrayType.dataType, str(f.type.multiArrayType.dataType))
            for f in list(desc.input) + list(desc.output)}


def check_spec(path: Path, spec: IOSpec) -> dict[str, Any]:
    """Read the saved package back and compare its feature names, shapes and dtypes with the spec."""
    import coremltools as ct

    desc = ct.models.MLModel(str(path), skip_model_load=True).get_spec().description
    got_in = {f.name: tuple(f.type.multiArrayType.shape) for f in desc.input}
    want_in = {t.name: tuple(t.shape) for t in spec.inputs}
    got_out = [f.name for f in desc.output]
    problems = []
    if got_in != want_in:
        problems.append(f"inputs {got_in} != {want_in}")
    if got_out != spec.output_names:
        problems.append(f"outputs {got_out} != {spec.output_names}")
    bad_dtype = [f.name for f in list(desc.input) + list(desc.output)
                 if f.type.multiArrayType.dataType != ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32]
    if bad_dtype:
        problems.append(f"not float32: {bad_dtype}")
    if problems:
        raise RuntimeError("Core ML package does not match the contract: " + "; ".join(problems))
    return {"inputs": list(got_in), "outputs": got_out}


def read_metadata(path: Path) -> dict[str, str]:
    import coremltools as ct

    return dict(ct.models.MLModel(str(path), skip_model_load=True).user_defined_metadata)


class Runner:
    """Core ML prediction (macOS only)."""

    name = "coreml"

    def __init__(self, path: Path, spec: IOSpec, *, threads: int = 1) -> None:
        if platform.system() != "Darwin":
            raise RuntimeUnavailable("Core ML models execute only on macOS/iOS; the spec was checked instead")
        import coremltools as ct

        self.model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
        self.spec = spec
        self.version = ct.__version__

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.model.predict({n: feeds[n] for n in self.spec.input_names})
        return {n: np.asarray(out[n], np.float32) for n in self.spec.output_names}
