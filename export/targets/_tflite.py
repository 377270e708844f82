"""TFLite / LiteRT: litert-torch converts; ai-edge-litert's Interpreter runs the ``serving_default`` signature.
Reduced precisions: ai-edge-quantizer rewrites the float32 model (`stexport.targets._tflite_quant`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stexport.calibration import Calibration
from stexport.manifest import package_version
from stexport.spec import GraphModule, IOSpec

SIGNATURE = "serving_default"


def convert(graph: GraphModule, spec: IOSpec, path: Path, *, precision: str, metadata: dict[str, str],
            calibration: Calibration | None = None) -> dict[str, Any]:
    import litert_torch

    graph.as_dict = True  # signature output names come from the dict keys
    try:
        edge = litert_torch.convert(graph, sample_kwargs=spec.example_inputs())
    finally:
        graph.as_dict = False
    edge.export(str(path))
    facts: dict[str, Any] = {"converter": "litert-torch", "litert_torch": package_version("litert-torch") or "unknown",
                             "signature": SIGNATURE}
    if precision != "fp32":
        from stexport.targets._tflite_quant import quantize

        facts["precision"] = quantize(path, spec, precision, calibration)
    return facts


def boundary_dtypes(path: Path, spec: IOSpec) -> dict[str, str]:
    """The signature's input and output dtypes, by name."""
    runner = interpreter_class()(model_path=str(path)).get_signature_runner(SIGNATURE)
    details = {**runner.get_input_details(), **runner.get_output_details()}
    return {name: np.dtype(d["dtype"]).name for name, d in details.items()}


def interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the older standalone runtime
        from tflite_runtime.interpreter import Interpreter
    return Interpreter


class Runner:
    """LiteRT Interpreter (XNNPACK delegate by default) through the signature runner, by tensor name."""

    name = "litert"

    def __init__(self, path: Path, spec: IOSpec, *, threads: int = 1) -> None:
        self.interpreter = interpreter_class()(model_path=str(path), num_threads=threads)
        sigs = self.interpreter.get_signature_list()
        if SIGNATURE not in sigs:
            raise RuntimeError(f"{path.name} has no signature {SIGNATURE!r}: {sorted(sigs)}")
        self.runner = self.interpreter.get_signature_runner(SIGNATURE)
        self.spec = spec
        self.version = package_version("ai-edge-litert") or "unknown"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(self.runner(**{n: feeds[n] for n in self.spec.input_names}))
