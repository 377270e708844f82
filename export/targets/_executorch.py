"""ExecuTorch: torch.export, lowered with the XNNPACK partitioner to a ``.pte``; method ``forward`` takes the inputs
positionally in manifest order and returns the outputs in manifest order. int8: the XNNPACK quantizer
(`stexport.targets._executorch_quant`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stexport.calibration import Calibration
from stexport.errors import UnsupportedModelError, refuse_passed_through
from stexport.manifest import package_version
from stexport.spec import GraphModule, IOSpec


def convert(graph: GraphModule, spec: IOSpec, path: Path, *, precision: str, metadata: dict[str, str],
            calibration: Calibration | None = None) -> dict[str, Any]:
    if any(isinstance(m, torch.nn.Conv3d) for m in graph.modules()):
        raise UnsupportedModelError("ExecuTorch has no 3D convolution (its XNNPACK delegate and portable kernels "
                                    "take 4D tensors), and this model uses Conv3d: export it to onnx, tflite or "
                                    "coreml, or export its 4D stream variant (movinet_aN_stream) to executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
    from executorch.exir.passes import MemoryPlanningPass

    example = spec.example_inputs()
    # int8: XNNPACK fails on quantized channels-last inputs (invalid parameter while propagating input shapes,
    # executorch 1.5.1), so the quantized programs take contiguous states
    cl_in = channels_last_inputs(spec) if precision == "fp32" else set()
    args = tuple(example[n].contiguous(memory_format=torch.channels_last) if n in cl_in else example[n]
                 for n in spec.input_names)
    outs_cl = {s.output for s in spec.states if s.name in cl_in}
    graph = _ChannelsLastOutputs(graph, [n in outs_cl for n in spec.output_names])
    details = None
    if precision == "fp32":
        with torch.no_grad():
            program = torch.export.export(graph, args, strict=False)
    else:
        from stexport.targets._executorch_quant import quantize

        program, details = quantize(graph, spec, args, precision, calibration)
    with torch.no_grad():
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        # inputs not memory-planned: the program reads each input tensor in place, where a planned input is first
        # copied into the program's memory (A2's 10.8 MB of states per step: its state loop 1.22x -> 1.10x LiteRT's)
        et = lowered.to_executorch(ExecutorchBackendConfig(
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False)))
    plan = et.executorch_program.execution_plan[0]
    names = {v: n for v, n in zip(plan.inputs, spec.input_names)}
    refuse_passed_through({o: names[v] for o, v in zip(spec.output_names, plan.outputs) if v in names},
                          f"executorch {package_version('executorch')} returns zeros for such an output")
    path.write_bytes(et.buffer)
    delegated = sum(1 for n in lowered.exported_program().graph.nodes
                    if n.op == "call_function" and "executorch_call_delegate" in str(n.target))
    facts: dict[str, Any] = {"converter": "torch.export + executorch (XNNPACK)",
                             "executorch": package_version("executorch"), "method": "forward",
                             "delegate_calls": delegated, "inputs_memory_planned": False,
                             "channels_last_states": sorted(cl_in)}
    if details is not None:
        left: dict[str, int] = {}
        for n in lowered.exported_program().graph.nodes:
            op = str(n.target)
            if (n.op == "call_function" and "executorch_call_delegate" not in op and "getitem" not in op
                    and "alloc" not in op):  # memory planning's allocations are not ops
                left[op] = left.get(op, 0) + 1
        details["delegate_calls"] = delegated
        details["float_ops"] = {op: {"count": c, "reason": (
            "outside the XNNPACK delegate: an int8 <-> float32 conversion at the float32 state-update path or "
            "boundary" if "quantize" in op else
            "outside the XNNPACK delegate, an ExecuTorch portable kernel in float32 (the state-update path's "
            "running means / frame count and buffer shifts, a pad's input, or an op XNNPACK does not take)")}
            for op, c in sorted(left.items())}
        facts["precision"] = details
    return facts


def channels_last_inputs(spec: IOSpec) -> set[str]:
    """The 4D state inputs, which the program takes (and returns) in channels-last memory (dim order 0, 2, 3, 1;
    the shape stays the manifest's): XNNPACK computes in NHWC, and NCHW-contiguous states would be transposed in
    and out of every step (about a fifth of MoViNet-A2's step). An app passes such a state as a channels-last
    tensor; the outputs come back that way, so feeding each ``_out`` back as it is keeps the format. A state with
    one channel or a 1x1 plane (a running mean ``[N, C, 1, 1]``) has the same bytes in both formats and stays
    contiguous: its channels-last strides are ambiguous and XNNPACK would resize such an output wrongly."""
    return {s.name for s in spec.states if len(s.shape) == 4 and s.shape[1] > 1 and s.shape[2] * s.shape[3] > 1}


def program_channels_last(path: Path, spec: IOSpec) -> set[str]:
    """The inputs that the program at ``path`` takes in channels-last memory (dim order 0, 2, 3, 1), read from the
    program itself. The runtime reads an input in place by its data pointer, whatever the strides of the tensor it
    is given, so each input must arrive in the program's own format: channels-last states for fp32
    (`channels_last_inputs`), contiguous ones for int8."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes())
    plan = getattr(program, "program", program).execution_plan[0]
    orders = [tuple(plan.values[i].val.dim_order) for i in plan.inputs]
    return {n for n, d in zip(spec.input_names, orders) if d == (0, 2, 3, 1)}


class _ChannelsLastOutputs(torch.nn.Module):
    """``graph`` with the chosen outputs copied to channels-last memory (inside the XNNPACK delegate)."""

    def __init__(self, graph: torch.nn.Module, channels_last: list[bool]) -> None:
        super().__init__()
        self.inner, self.channels_last = graph, channels_last

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = self.inner(*args)
        return tuple(torch.ops.aten._to_copy.default(o, memory_format=torch.channels_last) if cl else o
                     for o, cl in zip(outs, self.channels_last))


_DTYPES = {6: "float32", 5: "float16", 7: "float64", 1: "int8", 0: "uint8", 3: "int32", 4: "int64"}


def boundary_dtypes(path: Path, spec: IOSpec) -> dict[str, str]:
    """Input and output dtypes of method ``forward`` (by position, named as in the spec)."""
    from executorch.runtime import Runtime

    meta = Runtime.get().load_program(str(path)).metadata("forward")
    ins = [meta.input_tensor_meta(i).dtype() for i in range(meta.num_inputs())]
    outs = [meta.output_tensor_meta(i).dtype() for i in range(meta.num_outputs())]
    return {n: _DTYPES.get(int(d), str(d)) for n, d in [*zip(spec.input_names, ins), *zip(spec.output_names, outs)]}


def use_threads(threads: int) -> None:
    """Size ExecuTorch's XNNPACK threadpool to ``threads``. The pool is one per process and starts with a thread per
    core, so without this a "1 thread" ExecuTorch run used every core (and its idle threads competed with the
    caller's). Loaded programs share the pool: the last `Runner` created sets it for all."""
    from executorch.extension.pybindings import portable_lib

    from stexport.quiet import captured_output

    if portable_lib._threadpool_get_thread_count() != threads:
        with captured_output():  # (it logs the reset on stderr)
            portable_lib._unsafe_reset_threadpool(threads)


class Runner:
    """The ExecuTorch Python runtime, method ``forward``, on ``threads`` XNNPACK threads (`use_threads`)."""

    name = "executorch"

    def __init__(self, path: Path, spec: IOSpec, *, threads: int = 1) -> None:
        from executorch.runtime import Runtime

        use_threads(threads)
        self.method = Runtime.get().load_program(str(path)).load_method("forward")
        self.spec = spec
        self.channels_last = program_channels_last(path, spec)
        self.version = package_version("executorch")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.spec.input_names]
        args = [a.contiguous(memory_format=torch.channels_last) if n in self.channels_last else a
                for n, a in zip(self.spec.input_names, args)]
        outs = self.method.execute(args)
        return {n: o.detach().numpy().copy() for n, o in zip(self.spec.output_names, outs)}

    def stepper(self) -> TensorStepper:
        """A `stexport.streaming.Stepper` that carries the state as the runtime's own tensors (see `TensorStepper`)."""
        # the binding's `call` without cloning (`Method.execute` returns every output as a fresh tensor); that
        # binding is private, so a runtime without it gets `execute`: slower, same results
        binding = getattr(self.method, "_method", None)
        run = self.method.execute if binding is None else partial(binding.call, clone_outputs=False)
        return TensorStepper(run, self.spec, channels_last=self.channels_last)


class TensorStepper:
    """The loop an app runs with ExecuTorch: the states live in tensors the stepper owns, in the program's memory
    format (channels-last where the program takes it, `program_channels_last`), which the program reads
    in place (its inputs are not memory-planned); after each step the state outputs are copied into them. So each
    state is copied once per step, into memory allocated once: no numpy round trip, no layout copy, and no fresh
    output tensors (a clone per output per step, which in some processes' heaps also cost page faults: A2's 10.8 MB
    a step). ``run(args)`` runs method ``forward`` and may return outputs that live in the program's memory."""

    def __init__(self, run: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]], spec: IOSpec, *,
                 channels_last: set[str]) -> None:
        self.run, self.spec = run, spec
        self._names = spec.input_names
        self._state_out = [spec.output_names.index(s.output) for s in spec.states]
        self._logits = spec.output_names.index("logits")
        zero = {n: torch.from_numpy(v) for n, v in spec.zero_state().items()}
        self._state = {n: v.clone(memory_format=torch.channels_last if n in channels_last else torch.contiguous_format)
                       for n, v in zero.items()}
        self._mine = [self._state[s.name] for s in spec.states]

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        args = [self._state[n] if n in self._state else torch.from_numpy(np.ascontiguousarray(feeds[n]))
                for n in self._names]
        outs = self.run(args)
        torch._foreach_copy_(self._mine, [outs[i] for i in self._state_out])  # one call for every state
        return outs[self._logits].detach().numpy().copy()

    def state(self) -> dict[str, np.ndarray]:
        return {n: np.array(v.detach().numpy(), order="C") for n, v in self._state.items()}
