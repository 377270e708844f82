"""The I/O contract of one exported model: every tensor named, with shape, dtype, layout and init.

Stream form (causal stream models, and clip models' ring-buffer form): inputs ``frame`` then one input per state
in ``init_state()`` order; outputs ``logits`` then ``<state>_out`` in the same order.
Clip form: input ``clip`` (in the model's packed ``clip_layout``), output ``logits``.
"""

from __future__ import annotations

import inspect
import types
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from stexport.models import VideoModel

Form = Literal["stream", "clip"]


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    layout: str = ""
    role: str = ""  # "frame", "clip", "state", "state_out", "logits", "extra"
    init: str | None = None  # "zeros" for states; "zero_point" for integer states (see `StateSpec`)
    #: integer tensors: ``{"scale": float, "zero_point": int}`` (real value = scale * (q - zero_point))
    quantization: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        if self.init == "zero_point" and self.quantization:
            d["init_value"] = int(self.quantization["zero_point"])
        return {k: v for k, v in d.items() if v not in (None, "")}


@dataclass(frozen=True)
class StateSpec:
    name: str
    output: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    init: str = "zeros"
    layout: str = ""
    #: "buffer" (a delayed copy of an activation) or "accumulator" (running means, counters); see
    #: `VideoModel.state_kinds`
    kind: str = "accumulator"
    #: integer states: ``{"scale": float, "zero_point": int}``, read back from the artifact; their ``init`` is
    #: ``"zero_point"`` (the integer that means 0.0), written out as ``init_value``
    quantization: dict[str, Any] | None = None

    @property
    def init_value(self) -> int | float:
        """The value every element starts at: the zero point of an integer state, else 0."""
        return int(self.quantization["zero_point"]) if self.init == "zero_point" and self.quantization else 0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "output": self.output, "shape": list(self.shape), "dtype": self.dtype,
                             "init": self.init, **({"layout": self.layout} if self.layout else {}),
                             "kind": self.kind}
        if self.quantization:
            d.update(init_value=self.init_value, quantization=dict(self.quantization))
        return d


@dataclass(frozen=True)
class IOSpec:
    form: Form
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    states: tuple[StateSpec, ...] = field(default=())

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def state_names(self) -> list[str]:
        return [s.name for s in self.states]

    @property
    def result_names(self) -> list[str]:
        """The outputs an app reads as its answer: ``logits``, then any extra outputs (e.g. per-segment logits);
        not the state outputs."""
        return [t.name for t in self.outputs if t.role in ("logits", "extra")]

    def to_json(self) -> dict[str, Any]:
        """The contract as the manifest writes it (``form``, ``inputs``, ``outputs``, ``states``)."""
        return {"form": self.form, "inputs": [t.to_json() for t in self.inputs],
                "outputs": [t.to_json() for t in self.outputs], "states": [s.to_json() for s in self.states]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IOSpec:
        """The inverse of `to_json`; reads a bundle's ``manifest.json`` too."""
        def tensor(t: dict[str, Any]) -> TensorSpec:
            return TensorSpec(t["name"], tuple(t["shape"]), t.get("dtype", "float32"), t.get("layout", ""),
                              t.get("role", ""), t.get("init"), t.get("quantization"))

        states = tuple(StateSpec(s["name"], s["output"], tuple(s["shape"]), s.get("dtype", "float32"),
                                 s.get("init", "zeros"), s.get("layout", ""), s.get("kind", "accumulator"),
                                 s.get("quantization"))
                       for s in d.get("states", []))
        return cls(d["form"], tuple(tensor(t) for t in d["inputs"]), tuple(tensor(t) for t in d["outputs"]), states)

    def zero_state(self) -> dict[str, np.ndarray]:
        """Every state at its init, numpy in its dtype, by name: where a stream starts (zeros for float states,
        the zero point for integer ones: the value that means 0.0)."""
        return {s.name: np.full(s.shape, s.init_value, np.dtype(s.dtype)) for s in self.states}

    def example_inputs(self, *, seed: int = 0) -> dict[str, Tensor]:
        """Tracing inputs: a random frame/clip and zero states (shapes only matter)."""
        g = torch.Generator().manual_seed(seed)
        return {t.name: (torch.zeros(t.shape) if t.role == "state" else torch.rand(t.shape, generator=g))
                for t in self.inputs}


def _state_layout(shape: tuple[int, ...]) -> str:
    return "NCHW"[: len(shape)] if len(shape) <= 4 else ""


def build_spec(model: VideoModel, *, form: Form, batch_size: int = 1) -> IOSpec:
    """Derive the contract from the model itself (``init_state`` names and shapes, ``state_layouts``, a probe for
    the extra clip outputs)."""
    num_classes = int(model.num_classes)
    h, w = model.frame_size()
    logits = TensorSpec("logits", (batch_size, num_classes), role="logits", layout="NK")
    if form == "clip":
        from stexport.models import pack_clip

        layout = str(model.clip_layout)
        t = int(model.num_frames)
        shape = tuple(pack_clip(torch.empty(batch_size, 3, t, h, w, device="meta"), layout).shape)
        clip = TensorSpec("clip", shape, layout=layout, role="clip")
        extra = [n for n in model.clip_outputs if n != "logits"]
        if not extra:
            return IOSpec("clip", (clip,), (logits,))
        with torch.no_grad():  # shapes of the extra outputs, from one probe run
            probe = model.forward_packed_outputs(torch.zeros(shape))
        extra_specs = tuple(TensorSpec(n, tuple(probe[n].shape), role="extra") for n in extra)
        return IOSpec("clip", (clip,), (logits, *extra_specs))
    init = model.init_state(batch_size)
    layouts = model.state_layouts()
    kinds = model.state_kinds()
    states = []
    for name, value in init.items():
        if not name.isidentifier() or name.lower() != name or name in ("frame", "logits", "clip"):
            raise ValueError(f"state name {name!r} is not a lower-case identifier usable as a tensor name")
        if value.dim() > 4:
            raise ValueError(f"state {name!r} has rank {value.dim()} > 4; states must be at most 4D")
        if torch.count_nonzero(value) != 0:
            raise ValueError(f"state {name!r} does not start at zero")
        states.append(StateSpec(name, f"{name}_out", tuple(value.shape), str(value.dtype).replace("torch.", ""),
                                layout=layouts.get(name) or _state_layout(tuple(value.shape)),
                                kind=kinds.get(name, "accumulator")))
    frame = TensorSpec("frame", (batch_size, 3, h, w), layout="NCHW", role="frame")
    ins = (frame, *(TensorSpec(s.name, s.shape, s.dtype, s.layout, "state", "zeros") for s in states))
    outs = (logits, *(TensorSpec(s.output, s.shape, s.dtype, s.layout, "state_out") for s in states))
    return IOSpec("stream", ins, outs, tuple(states))


def exported_io(program: torch.export.ExportedProgram, spec: IOSpec) -> tuple[dict[str, torch.fx.Node], dict[str, Any]]:
    """(``program``'s input placeholders, its output values), each by the spec's tensor name."""
    names = dict(zip(program.graph_signature.user_inputs, spec.input_names))
    inputs = {names[n.name]: n for n in program.graph.nodes if n.op == "placeholder" and n.name in names}
    outputs = dict(zip(spec.output_names, next(n for n in program.graph.nodes if n.op == "output").args[0]))
    return inputs, outputs


class GraphModule(nn.Module):
    """A module whose ``forward`` takes exactly the spec's inputs (positional or by name) and returns the outputs.

    ``as_dict=False``: a tuple in ``spec.output_names`` order (ONNX, ExecuTorch, Core ML).
    ``as_dict=True``: a dict keyed by output name (LiteRT signatures take their output names from it).
    ``frame_in``: a module applied to the ``frame`` input before the model's step (an integer boundary folds the
    preprocessing into the graph with it, `stexport.boundary.FoldedPreprocess`).
    """

    def __init__(self, model: nn.Module, spec: IOSpec, *, as_dict: bool = False,
                 frame_in: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        self.as_dict = as_dict
        self.frame_in = frame_in
        params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in spec.input_names]
        self._signature = inspect.Signature(params)

        def forward(self: GraphModule, *args: Tensor, **kwargs: Tensor) -> Any:
            return self._run(self._signature.bind(*args, **kwargs).arguments)

        forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *params])
        self.forward = types.MethodType(forward, self)

    def _run(self, inputs: dict[str, Tensor]) -> Any:
        if self.spec.form == "clip":
            outs = self.model.forward_packed_outputs(inputs["clip"])  # type: ignore[operator]
        else:
            frame = inputs["frame"] if self.frame_in is None else self.frame_in(inputs["frame"])
            logits, new = self.model.step(frame, {k: inputs[k] for k in self.spec.state_names})  # type: ignore[operator]
            outs = {"logits": logits, **{s.output: new[s.name] for s in self.spec.states}}
        return outs if self.as_dict else tuple(outs[n] for n in self.spec.output_names)
