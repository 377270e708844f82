"""The table of export targets. Each target module (imported lazily, only when that target is used) provides::

    convert(graph: GraphModule, spec: IOSpec, path: Path, *, precision: str) -> dict   # converter facts
    Runner(path: Path, spec: IOSpec, *, threads: int = 1)   # .run(feeds: dict[str, ndarray]) -> dict[str, ndarray]
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from stexport.errors import MissingExtraError
from stexport.models._registry import UnknownNameError


@dataclass(frozen=True, kw_only=True)
class Target:
    name: str
    suffix: str
    extra: str
    requires: tuple[str, ...]  # import names of the converter and runtime
    precisions: tuple[str, ...]
    runtime: str
    description: str
    directory: bool = False  # the artifact is a folder (.mlpackage)

    def missing(self) -> list[str]:
        """Import names of this target's packages that are not installed."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]

    def installed(self) -> bool:
        return not self.missing()

    def load(self) -> ModuleType:
        """The target's implementation module; raises `MissingExtraError` naming the pip install to run."""
        missing = self.missing()
        if missing:
            raise MissingExtraError(self.name, self.extra, ", ".join(missing))
        return importlib.import_module(f"stexport.targets._{self.name}")


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target(name="onnx", suffix=".onnx", extra="onnx", requires=("onnx", "onnxruntime", "onnxsim"),
           precisions=("fp32",), runtime="onnxruntime",
           description="torch.onnx (TorchScript exporter, opset 17) + onnxsim; runs in ONNX Runtime"),
    Target(name="tflite", suffix=".tflite", extra="tflite", requires=("litert_torch", "ai_edge_litert"),
           precisions=("fp32",), runtime="LiteRT Interpreter (XNNPACK)",
           description="litert-torch; signature serving_default; runs in LiteRT (ai-edge-litert)"),
    Target(name="coreml", suffix=".mlpackage", extra="coreml", requires=("coremltools",),
           precisions=("fp32",), runtime="Core ML (macOS/iOS only)", directory=True,
           description="coremltools ML program, state as plain inputs/outputs (iOS 15+)"),
    Target(name="executorch", suffix=".pte", extra="executorch", requires=("executorch",),
           precisions=("fp32",), runtime="ExecuTorch runtime (XNNPACK)",
           description="torch.export + XNNPACK partitioner; method forward, inputs in manifest order"),
)}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownNameError("target", name, sorted(TARGETS)) from None
