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
from stexport.spec import GraphModule, IOSpec, exported_io


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
    ordered = bool(spec.states) and states_read_before_written(program, spec)
    with torch.no_grad():
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              constant_methods={ORDERED_METHOD: ordered})
        # inputs not memory-planned: the program reads each input tensor in place, where a planned input is first
        # copied into the program's memory (A2's 10.8 MB of states per step: its state loop 1.22x -> 1.10x LiteRT's)
        et = lowered.to_executorch(ExecutorchBackendConfig(
            memory_planning_pass=MemoryPlanningPass(alloc_graph_input=False)))
    plan = next(p for p in et.executorch_program.execution_plan if p.name == "forward")
    names = {v: n for v, n in zip(plan.inputs, spec.input_names)}
    refuse_passed_through({o: names[v] for o, v in zip(spec.output_names, plan.outputs) if v in names},
                          f"executorch {package_version('executorch')} returns zeros for such an output")
    path.write_bytes(et.buffer)
    cl_read, in_place = program_facts(path, spec)  # as the runtime will read them
    delegated = sum(1 for n in lowered.exported_program().graph.nodes
                    if n.op == "call_function" and "executorch_call_delegate" in str(n.target))
    facts: dict[str, Any] = {"converter": "torch.export + executorch (XNNPACK)",
                             "executorch": package_version("executorch"), "method": "forward",
                             "delegate_calls": delegated, "inputs_memory_planned": False,
                             "channels_last_states": sorted(cl_read), "state_outputs_feed_back_in_place": in_place}
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


#: a constant method of every program: True if it has states and each state output is written only after the step
#: has read the state input for the last time (`states_read_before_written`)
ORDERED_METHOD = "stexport_states_read_before_written"
_VIEWS = frozenset(getattr(torch.ops.aten, n) for n in (
    "view", "_unsafe_view", "reshape", "permute", "expand", "alias", "_to_copy", "clone", "squeeze", "unsqueeze",
    "flatten", "t", "transpose"))
_ELEMENTWISE = frozenset(getattr(torch.ops.aten, n) for n in (
    "add", "sub", "mul", "div", "clamp", "hardtanh", "relu", "minimum", "maximum"))


def states_read_before_written(program: torch.export.ExportedProgram, spec: IOSpec) -> bool:
    """Whether, in ``program``'s node order (which its XNNPACK delegate runs in), every read of each state input comes
    before the first op that may write that state's output: then the runtime may take the output tensor of one step
    as the input of the next (the same memory) without a copy. The first writer is the output's producer, or the
    earliest of the layout copies and views before it (XNNPACK drops those that change nothing); a read is any op on
    the input or on a view of it. An elementwise op may be both the last read and the writer (it reads each element
    before it writes it)."""
    order = {n: i for i, n in enumerate(program.graph.nodes)}
    by_input, outputs = exported_io(program, spec)

    def packet(n: torch.fx.Node) -> Any:
        return getattr(n.target, "overloadpacket", None)

    for st in spec.states:
        reads, todo = -1, [by_input[st.name]]
        while todo:
            for user in todo.pop().users:
                if user.op != "output":
                    reads = max(reads, order[user])
                    if packet(user) in _VIEWS:
                        todo.append(user)
        writer = outputs[st.output]
        while packet(writer) in _VIEWS and isinstance(writer.args[0], torch.fx.Node):
            writer = writer.args[0]
        if writer.op != "call_function":
            return False
        if reads > order[writer] or (reads == order[writer] and packet(writer) not in _ELEMENTWISE):
            return False
    return True


def program_facts(path: Path, spec: IOSpec) -> tuple[set[str], bool]:
    """Read from the program at ``path`` itself: (the inputs it takes in channels-last memory, dim order 0, 2, 3, 1;
    whether an app may feed its state outputs back as the next step's state inputs, in place).

    The runtime reads an input in place by its data pointer, whatever the strides of the tensor it is given, so each
    input must arrive in the program's own format: channels-last states for fp32 (`channels_last_inputs`), contiguous
    ones for int8. In place: the states are read before they are written (`ORDERED_METHOD`, a constant method whose
    one output is the value) and ``forward`` runs one delegate call and no kernel, so the state outputs are the only
    tensors of the program's planned memory, which no other op reuses while a step runs.

    Reads only those fields of the program's flatbuffer, in place: 2-8 ms for A0, where ExecuTorch's own Python
    deserializer, which unpacks the whole program, took 16-142 ms (the runtime loads it in 7-9 ms)."""
    import mmap

    from executorch.exir._serialize._flatbuffer_program import _patch_generated_flatbuffer_aliases
    from executorch.exir._serialize.generated.executorch_flatbuffer import Bool, InstructionArguments, Program, Tensor

    _patch_generated_flatbuffer_aliases()  # (the generated accessors need it to build nested tables)

    def value(plan: Any, index: int, kind: Any) -> Any:
        table, out = plan.Values(index).Val(), kind()
        out.Init(table.Bytes, table.Pos)
        return out

    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        root = Program.Program.GetRootAs(data, 0)
        plans = {p.Name().decode(): p for p in map(root.ExecutionPlan, range(root.ExecutionPlanLength()))}
        plan = plans["forward"]
        orders = [tuple(value(plan, int(i), Tensor.Tensor).DimOrderAsNumpy().tolist()) for i in plan.InputsAsNumpy()]
        flag = plans.get(ORDERED_METHOD)
        ordered = flag is not None and bool(value(flag, flag.Outputs(0), Bool.Bool).BoolVal())
        calls = [c.Instructions(k).InstrArgsType() for c in map(plan.Chains, range(plan.ChainsLength()))
                 for k in range(c.InstructionsLength())]
    kinds = InstructionArguments.InstructionArguments
    channels_last = {n for n, d in zip(spec.input_names, orders) if d == (0, 2, 3, 1)}
    return channels_last, ordered and calls.count(kinds.DelegateCall) == 1 and kinds.KernelCall not in calls


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
        self.channels_last, self.in_place = program_facts(path, spec)
        self.version = package_version("executorch")
        self._resident: TensorStepper | None = None  # the stepper whose state lives in the program's memory

    def _claim(self, stepper: TensorStepper | None) -> None:
        """Before ``stepper`` (None: `run`) runs the program, which rewrites the program's output memory: a stepper
        whose state still lives there takes it out first."""
        if self._resident is not None and self._resident is not stepper:
            self._resident.take_state_out()
        self._resident = stepper if stepper is not None and stepper.in_place else None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._claim(None)
        outs = self.method.execute([program_input(feeds[n], n in self.channels_last) for n in self.spec.input_names])
        return {n: o.detach().numpy().copy() for n, o in zip(self.spec.output_names, outs)}

    def stepper(self) -> TensorStepper:
        """A `stexport.streaming.Stepper` that carries the state as the runtime's own tensors (see `TensorStepper`)."""
        # the binding's `call` without cloning (`Method.execute` returns every output as a fresh tensor); that
        # binding is private, so a runtime without it gets `execute`: slower (and no state in place), same results
        binding = getattr(self.method, "_method", None)
        if binding is None:
            return TensorStepper(self.method.execute, self.spec, channels_last=self.channels_last)
        return TensorStepper(partial(binding.call, clone_outputs=False), self.spec, channels_last=self.channels_last,
                             in_place=self.in_place, claim=self._claim)


def program_input(value: np.ndarray, channels_last: bool) -> torch.Tensor:
    """``value`` as a tensor in the program's memory format for that input (`program_facts`): the runtime reads it
    by its data pointer, whatever its strides."""
    t = torch.from_numpy(np.ascontiguousarray(value))
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


class TensorStepper:
    """The loop an app runs with ExecuTorch, the states in the program's memory format (channels-last where the
    program takes it, `program_facts`), read by the program in place (its inputs are not memory-planned).

    ``in_place`` (the program allows it, `program_facts`): each step's state outputs, which live in the program's
    memory, are the next step's state inputs as they are: no copy at all (A2: 10.8 MB a step; its state loop
    0.80x, A0's 0.85x). Else the stepper owns one tensor per state and copies the outputs into it after each step,
    into memory allocated once: no numpy round trip, no layout copy, and no fresh output tensors.

    ``run(args)`` runs method ``forward`` and may return outputs that live in the program's memory; ``claim(self)``
    is called before each step by whoever shares that program (`Runner`), so that another stepper's state in its
    memory is taken out first (`take_state_out`)."""

    def __init__(self, run: Callable[[list[torch.Tensor]], Sequence[torch.Tensor]], spec: IOSpec, *,
                 channels_last: set[str], in_place: bool = False,
                 claim: Callable[[TensorStepper], None] | None = None) -> None:
        self.run, self.spec, self.in_place, self._claim = run, spec, in_place, claim
        self._names, self._channels_last = spec.input_names, channels_last
        self._state_out = [spec.output_names.index(s.output) for s in spec.states]
        self._logits = spec.output_names.index("logits")
        zero = {n: torch.from_numpy(v) for n, v in spec.zero_state().items()}
        self._own = {n: v.clone(memory_format=torch.channels_last if n in channels_last else torch.contiguous_format)
                     for n, v in zero.items()}
        self._state = dict(self._own)  # what the next step reads: the stepper's tensors or the program's outputs

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if self._claim is not None:
            self._claim(self)
        args = [self._state[n] if n in self._state else program_input(feeds[n], n in self._channels_last)
                for n in self._names]
        outs = self.run(args)
        new = [outs[i] for i in self._state_out]
        if self.in_place:
            self._state = {s.name: o for s, o in zip(self.spec.states, new)}
        elif new:  # (a clip program has no state)
            torch._foreach_copy_([self._own[s.name] for s in self.spec.states], new)  # one call for every state
        return outs[self._logits].detach().numpy().copy()

    def take_state_out(self) -> None:
        """Copy a state that lives in the program's memory into the stepper's own tensors (before another run of
        the program overwrites it)."""
        if any(self._state[n] is not v for n, v in self._own.items()):
            torch._foreach_copy_(list(self._own.values()), [self._state[n] for n in self._own])
            self._state = dict(self._own)

    def state(self) -> dict[str, np.ndarray]:
        return {n: np.array(v.detach().numpy(), order="C") for n, v in self._state.items()}
