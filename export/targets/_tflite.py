"""TFLite / LiteRT: litert-torch converts; ai-edge-litert's Interpreter runs the ``serving_default`` signature.
Reduced precisions: ai-edge-quantizer rewrites the float32 model (`stexport.targets._tflite_quant`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stexport.calibration import Calibration
from stexport.errors import refuse_passed_through
from stexport.manifest import package_version
from stexport.spec import GraphModule, IOSpec

SIGNATURE = "serving_default"


def convert(graph: GraphModule, spec: IOSpec, path: Path, *, precision: str, metadata: dict[str, str],
            calibration: Calibration | None = None, io: str = "float32") -> dict[str, Any]:
    """``io="int8"``: ``graph`` takes raw pixels (`stexport.boundary.raw_frame_spec`, ``spec``) and the quantized
    model gets the integer boundary (`stexport.targets._tflite_io`)."""
    import litert_torch

    graph.as_dict = True  # signature output names come from the dict keys
    try:
        edge = litert_torch.convert(graph, sample_kwargs=spec.example_inputs())
    finally:
        graph.as_dict = False
    edge.export(str(path))
    refuse_passed_through(passed_through(path), "LiteRT's CompiledModel (and LiteRT.js) reads such a tensor from the "
                          "buffer bound to the output, not from the one the app feeds")
    facts: dict[str, Any] = {"converter": "litert-torch", "litert_torch": package_version("litert-torch") or "unknown",
                             "signature": SIGNATURE}
    if precision != "fp32":
        from stexport.targets._tflite_quant import quantize

        facts["precision"] = quantize(path, spec, precision, calibration, io=io)
    return facts


def passed_through(path: Path) -> dict[str, str]:
    """``{output name: input name}`` for the signature outputs that are an input tensor itself (a state the step
    returns unchanged: the converter drops any identity op)."""
    from stexport.graphcheck import _tflite_model

    model = _tflite_model(path)
    sig = next(model.SignatureDefs(i) for i in range(model.SignatureDefsLength())
               if model.SignatureDefs(i).SignatureKey().decode() == SIGNATURE)
    ins = {sig.Inputs(i).TensorIndex(): sig.Inputs(i).Name().decode() for i in range(sig.InputsLength())}
    outs = {sig.Outputs(i).Name().decode(): sig.Outputs(i).TensorIndex() for i in range(sig.OutputsLength())}
    return {name: ins[t] for name, t in outs.items() if t in ins}


def boundary_dtypes(path: Path, spec: IOSpec) -> dict[str, str]:
    """The signature's input and output dtypes, by name."""
    runner = interpreter_class()(model_path=str(path)).get_signature_runner(SIGNATURE)
    details = {**runner.get_input_details(), **runner.get_output_details()}
    return {name: np.dtype(d["dtype"]).name for name, d in details.items()}


def boundary_details(path: Path) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """(dtype, quantization) of every signature input and output (`stexport.targets._tflite_io`)."""
    from stexport.targets._tflite_io import boundary_details as details

    return details(path)


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
        self.spec, self.path, self.threads = spec, path, threads
        self.version = package_version("ai-edge-litert") or "unknown"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(self.runner(**{n: feeds[n] for n in self.spec.input_names}))

    def stepper(self) -> Any:
        """A `stexport.streaming.Stepper` keeping the state in LiteRT tensor buffers (see `BufferStepper`); the
        Interpreter's copying loop where the CompiledModel API is missing (tflite-runtime)."""
        try:
            return BufferStepper(self.path, self.spec, threads=self.threads)
        except ImportError:
            from stexport.streaming import CopyStepper

            return CopyStepper(self.run, self.spec)


class BufferStepper:
    """LiteRT ``CompiledModel`` (XNNPACK on the CPU) with its own tensor buffers: after each step the state
    output buffers become the next step's state inputs (swapped, not copied); only the frame is written and the
    logits read. This is the loop an app runs with the LiteRT ``CompiledModel``/``TensorBuffer`` API."""

    def __init__(self, path: Path, spec: IOSpec, *, threads: int = 1) -> None:
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.options import Options

        from stexport.quiet import captured_output

        options = Options()
        options.cpu_options.num_threads = threads
        with captured_output():  # (accelerator plugins that are not on this machine announce themselves)
            self.model = CompiledModel.from_file(str(path), options=options)
        self.spec = spec
        self._sig = self.model.get_signature_index(SIGNATURE)
        names = self.model.get_signature_list()[SIGNATURE]
        ins, outs = list(names["inputs"]), list(names["outputs"])
        self._in_index = {n: ins.index(n) for n in spec.input_names}
        self._logits = next(t for t in spec.outputs if t.name == "logits")
        self._logits_index = outs.index("logits")
        self._pairs = [(ins.index(s.name), outs.index(s.output)) for s in spec.states]
        self._ins = self.model.create_input_buffers(self._sig)
        self._outs = self.model.create_output_buffers(self._sig)
        zero = spec.zero_state()  # each state at its init, in its dtype (an int8 state at its zero point)
        for s, (i, _) in zip(spec.states, self._pairs, strict=True):
            self._ins[i].write(zero[s.name])

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        for name, value in feeds.items():
            self._ins[self._in_index[name]].write(value)
        self.model.run_by_index(self._sig, self._ins, self._outs)
        size = int(np.prod(self._logits.shape))
        logits = self._outs[self._logits_index].read(size, np.float32).reshape(self._logits.shape)
        for i, o in self._pairs:
            self._ins[i], self._outs[o] = self._outs[o], self._ins[i]
        return logits

    def state(self) -> dict[str, np.ndarray]:
        return {s.name: self._ins[i].read(int(np.prod(s.shape)), np.dtype(s.dtype)).reshape(s.shape)
                for s, (i, _) in zip(self.spec.states, self._pairs, strict=True)}
