"""The table of export targets. Each target module (imported lazily, only when that target is used) provides::

    convert(graph: GraphModule, spec: IOSpec, path: Path, *, precision: str, metadata: dict[str, str],
            calibration: Calibration | None = None) -> dict   # converter facts (``"precision"``: what was done)
    boundary_dtypes(path: Path, spec: IOSpec) -> dict[str, str]   # dtype of every input and output, read back
    Runner(path: Path, spec: IOSpec, *, threads: int = 1)   # .run(feeds: dict[str, ndarray]) -> dict[str, ndarray]

Precisions (`PRECISIONS`): states, frames and logits stay float32 at the boundary in every one of them.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from stexport.errors import MissingExtraError, UnsupportedPrecisionError
from stexport.models._registry import UnknownNameError

#: what each precision means (the manifest's ``precision_details`` says exactly what a target did)
PRECISIONS: dict[str, str] = {
    "fp32": "float32 weights and compute",
    "fp16": "float16 weights (tflite: dequantized to float32 at load; onnx, coreml: float16 compute)",
    "int8-dynamic": "int8 weights, activations quantized on the fly (no calibration)",
    "int8": "int8 weights and activations, calibrated on representative frames (--calibration)",
}
#: precisions that need calibration frames
CALIBRATED = frozenset({"int8"})


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
    #: the layout of stream steps this runtime runs best (`VideoModel.with_step_layout`; MoViNet streams and online
    #: TSM have the choice): LiteRT cancels NHWC permutes around its convs; the others would run them as transposes
    step_layout: str = "nchw"

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
    Target(name="onnx", suffix=".onnx", extra="onnx", requires=("onnx", "onnxscript", "onnxruntime", "onnxsim"),
           precisions=("fp32", "fp16", "int8-dynamic", "int8"), runtime="onnxruntime",
           description="torch.onnx.export(dynamo=True) (torch.export, opset 18) + onnxsim; runs in ONNX Runtime"),
    Target(name="tflite", suffix=".tflite", extra="tflite", step_layout="nhwc",
           requires=("litert_torch", "ai_edge_litert", "ai_edge_quantizer"),
           precisions=("fp32", "fp16", "int8-dynamic", "int8"), runtime="LiteRT Interpreter (XNNPACK)",
           description="litert-torch; signature serving_default; runs in LiteRT (ai-edge-litert)"),
    Target(name="coreml", suffix=".mlpackage", extra="coreml", requires=("coremltools",),
           precisions=("fp32", "fp16"), runtime="Core ML (macOS/iOS only)", directory=True,
           description="coremltools ML program, state as plain inputs/outputs (iOS 15+)"),
    Target(name="executorch", suffix=".pte", extra="executorch", requires=("executorch",),
           precisions=("fp32", "int8"), runtime="ExecuTorch runtime (XNNPACK)",
           description="torch.export + XNNPACK partitioner; method forward, inputs in manifest order"),
)}


def check_precision(target: Target, precision: str) -> None:
    """Raise `UnsupportedPrecisionError` (listing the target's precisions) unless ``precision`` is offered."""
    if precision not in target.precisions:
        known = "" if precision in PRECISIONS else f" (known precisions: {', '.join(PRECISIONS)})"
        raise UnsupportedPrecisionError(f"precision {precision!r} is not available for target {target.name!r}; "
                                        f"choose one of {', '.join(target.precisions)}{known}")


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownNameError("target", name, sorted(TARGETS)) from None
