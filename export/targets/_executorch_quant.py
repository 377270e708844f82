"""ExecuTorch int8 with the XNNPACK quantizer (PT2E: annotate, calibrate, convert), before lowering: int8 weights
per output channel and int8 activations whose ranges follow LiteRT's rule (`_percentile_observer`: the
`stexport.calibration.RANGE_PERCENTILE` percentiles of each activation over the calibration samples; the image
input and the logits keep their full range); the program's inputs and outputs stay float32. The state-update path
(`stexport.calibration.state_path`) is left out of the quantizer's annotation (float32).

No ``int8-dynamic``: XNNPACK's dynamically quantized convolutions fail when the delegate runs
(``xnn_status_invalid_parameter`` while propagating input shapes) on these graphs -- the RGB stem conv behind a
permute or reshape, and TSM's 1x1 convs behind the shift's reshape -- in executorch 1.5.1.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from stexport.calibration import RANGE_PERCENTILE, Calibration, Node, histogram_percentiles, state_path
from stexport.manifest import package_version
from stexport.spec import IOSpec

WEIGHTED = ("conv", "linear", "addmm", "matmul", ".mm", "bmm")


def _outputs(gm: torch.fx.GraphModule, spec: IOSpec) -> dict[str, Any]:
    """The graph's output values (fx nodes, or constants) by the spec's output names."""
    outs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    return dict(zip(spec.output_names, outs if isinstance(outs, (tuple, list)) else [outs]))


def _state_nodes(gm: torch.fx.GraphModule, spec: IOSpec) -> set[str]:
    nodes = [Node(n.name, str(n.target), [a.name for a in n.all_input_nodes], [n.name])
             for n in gm.graph.nodes if n.op == "call_function"]
    by_output = {name: getattr(o, "name", None) for name, o in _outputs(gm, spec).items()}
    sinks = [by_output[s.output] for s in spec.states if by_output.get(s.output)]
    placeholders = {n.name for n in gm.graph.nodes if n.op == "placeholder"}
    sources = [s.name for s in spec.states if s.name in placeholders]
    if len(sources) != len(spec.states):  # placeholder names differ from the inputs': map by position
        ph = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        sources = [ph[spec.input_names.index(s.name)] for s in spec.states]
    return state_path(nodes, sources, [s for s in sinks if s], lambda op: any(w in op for w in WEIGHTED))


def _output_tails(gm: torch.fx.GraphModule, spec: IOSpec, *, observers: bool = False) -> set[torch.fx.Node]:
    """Nodes between the last weighted ops and each output that is not a state: the arithmetic that combines
    classifier logits (the ensemble's ``la + (b_prev_logits - la) * half``). Left to the quantizer, each of those
    ops rounds the logits to int8 at its observed range: the ensemble's int8 program then erred 0.0040 against
    PyTorch (64x64; its LiteRT one 0.0004, A0's alone 0.0004). They stay float32; a classifier's own output is
    quantized as before. ``observers``: in a prepared graph, walk through (and return) its observers too."""
    ops = ("call_function", "call_module") if observers else ("call_function",)
    state_outputs = {s.output for s in spec.states}
    todo = [o for name, o in _outputs(gm, spec).items() if name not in state_outputs and isinstance(o, torch.fx.Node)]
    tail: set[torch.fx.Node] = set()
    while todo:
        n = todo.pop()
        if n.op not in ops or n in tail or any(w in str(n.target) for w in WEIGHTED):
            continue
        tail.add(n)
        todo.extend(n.all_input_nodes)
    return tail


SHAPE_OPS = ("permute", "view", "reshape", "squeeze", "transpose", "clone", "expand", "slice", "contiguous")


def _pad_feeders(gm: torch.fx.GraphModule) -> set[str]:
    """Nodes whose output reaches a pad through shape-only ops. XNNPACK pads float32 tensors only, and a pad that
    reads a dequantized tensor directly fails when the delegate is compiled (StaticConstantPad, invalid
    parameter), so these nodes stay float32 and the pad reads a float32 tensor."""
    out: set[str] = set()
    for n in gm.graph.nodes:
        if n.op == "call_function" and "pad" in str(n.target):
            todo = list(n.all_input_nodes[:1])
            while todo:
                m = todo.pop()
                if m.op != "call_function" or m.name in out:
                    continue
                out.add(m.name)
                if any(s in str(m.target) for s in SHAPE_OPS):
                    todo.extend(m.all_input_nodes[:1])
    return out


def _int8_extras(config: Any, allowed: Any) -> Any:
    """A quantizer run after the XNNPACK one, for ops it leaves float32 although XNNPACK runs them in int8:
    ``hardtanh`` / ``clamp`` (relu6), ``narrow`` / ``slice`` (online TSM's channel shift), each with its output
    sharing the input's quantization; ``mean.dim`` over H, W with keepdim (XNNPACK's quantized global average
    pooling) and ``hardswish`` (XNNPACK's int8 hard-swish, a table lookup), each with its own output
    quantization. Without them each hard-swish and spatial mean leaves the int8 graph through a dequantize /
    quantize pair; and a slice left float gets the quantization its consumer observed, which differs from its
    input's: XNNPACK then refuses to build the int8 slice ("failed to create static slice node") and the
    program does not load."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, Quantizer, SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY
    from torchao.quantization.pt2e.quantizer.utils import get_input_act_qspec, get_output_act_qspec

    shared = {torch.ops.aten.hardtanh.default, torch.ops.aten.clamp.default, torch.ops.aten.narrow.default,
              torch.ops.aten.slice.Tensor}  # output quantization = the input's
    means = {torch.ops.aten.mean.dim}
    own = {torch.ops.aten.hardswish.default}  # output quantization observed on its own

    class Extras(Quantizer):
        def annotate(self, gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
            for n in gm.graph.nodes:
                if n.op != "call_function" or n.target not in shared | means | own or not allowed(n):
                    continue
                if Q_ANNOTATION_KEY in n.meta and n.meta[Q_ANNOTATION_KEY]._annotated:
                    continue
                x = n.args[0]
                if not isinstance(x, torch.fx.Node) or x.meta["val"].dtype != torch.float32:
                    continue
                if n.target in means:
                    dims = sorted(d % x.meta["val"].dim() for d in n.args[1])
                    if x.meta["val"].dim() != 4 or dims != [2, 3] or not (len(n.args) > 2 and n.args[2]):
                        continue
                out = get_output_act_qspec(config) if n.target in means | own else SharedQuantizationSpec((x, n))
                n.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
                    input_qspec_map={x: get_input_act_qspec(config)}, output_qspec=out, _annotated=True)
            return gm

        def validate(self, model: torch.fx.GraphModule) -> None:
            pass

    return Extras()


@functools.cache
def _percentile_observer() -> Any:
    """An activation observer that sets the range at the `RANGE_PERCENTILE` percentiles of the values it saw
    (`histogram_percentiles` of the histogram it keeps over their min and max, 0 inside), or at the min and max
    when ``full_range``. An observer shared by several edges (a concatenation's inputs and output) counts them all.
    XNNPACKQuantizer's default, a histogram observer that picks the range of least squared error, left
    movinet_a0_stream_motion7's int8 clip form at 94.4% on the motion7 test split (fp32 99.4%) and its stream form at
    97.7%; the clip form moved between 93.4% and 97.9% with the number of calibration clips (16, 32, 64)."""
    from torchao.quantization.pt2e.observer import HistogramObserver

    class PercentileObserver(HistogramObserver):
        full_range = False

        def calculate_qparams(self) -> Any:
            if not torch.isfinite(self.min_val) or not torch.isfinite(self.max_val):
                return super().calculate_qparams()  # saw no values: torchao's default, and its warning
            if self.full_range:
                return self._calculate_qparams(self.min_val, self.max_val)
            lo, hi = histogram_percentiles(self.histogram.numpy(), float(self.min_val), float(self.max_val))
            return self._calculate_qparams(torch.tensor(lo), torch.tensor(hi))

    return PercentileObserver


def _percentile_config(config: Any) -> Any:
    """``config`` with its activation observers replaced by `_percentile_observer`'s (same arguments)."""
    import dataclasses

    def swap(qspec: Any) -> Any:
        kwargs = qspec.observer_or_fake_quant_ctr.p.keywords
        return dataclasses.replace(qspec, observer_or_fake_quant_ctr=_percentile_observer().with_args(**kwargs))

    return dataclasses.replace(config, input_activation=swap(config.input_activation),
                               output_activation=swap(config.output_activation))


#: ops that only move or copy values: an observer reached from the image input through these alone observes pixels
MOVE_OPS = (*SHAPE_OPS, "_to_copy", "cat", "pad")


def _keep_full_range(prepared: torch.fx.GraphModule, spec: IOSpec) -> int:
    """Mark the observers of the image input (its range is the preprocessing's; clipping it would saturate bright
    pixels), reached from it through `MOVE_OPS` and other observers, and those between the last weighted ops and
    the results (the logits: their largest values decide top-1) to keep their min and max, as LiteRT's
    `_percentile_ranges` keeps those tensors. Returns how many observers."""
    cls = _percentile_observer()
    placeholders = [n for n in prepared.graph.nodes if n.op == "placeholder"]
    todo = [placeholders[i] for i, name in enumerate(spec.input_names) if name not in spec.state_names]
    pixels: set[torch.fx.Node] = set()
    while todo:
        n = todo.pop()
        pixels.add(n)
        todo.extend(u for u in n.users if u not in pixels and (
            u.op == "call_module" or u.op == "call_function" and any(m in str(u.target) for m in MOVE_OPS)))
    results = _output_tails(prepared, spec, observers=True)  # (TSM: the per-segment logits, then their mean)
    kept = {str(n.target) for n in pixels | results
            if n.op == "call_module" and isinstance(getattr(prepared, str(n.target)), cls)}
    for name in kept:
        getattr(prepared, name).full_range = True
    return len(kept)


NEW_TENSORS = ("new_full", "new_zeros", "new_ones")


def _freeze_new_tensors(gm: torch.fx.GraphModule) -> int:
    """``x.new_full(shape, v)`` / ``new_zeros`` / ``new_ones`` of a static shape (the integer step form's residual
    average pool as a depthwise conv: weight ``1/9``, bias 0) become constant buffers. Left as ops, the quantizer
    quantizes the weight per channel at run time: XNNPACK takes no such conv and ``to_executorch`` fails (no out
    variant of ``quantize_per_channel``). Returns the number frozen."""
    k = 0
    for n in list(gm.graph.nodes):
        name = str(n.target)
        val = n.meta.get("val")
        if n.op != "call_function" or not any(t in name for t in NEW_TENSORS) or not isinstance(val, torch.Tensor):
            continue
        shape = [int(d) for d in val.shape]
        if "new_full" in name:
            value = torch.full(shape, float(n.args[2]), dtype=val.dtype)
        else:
            value = (torch.zeros if "new_zeros" in name else torch.ones)(shape, dtype=val.dtype)
        attr = f"_stexport_const_{n.name}"
        gm.register_buffer(attr, value)
        with gm.graph.inserting_before(n):
            const = gm.graph.get_attr(attr)
        const.meta["val"] = val
        n.replace_all_uses_with(const)
        gm.graph.erase_node(n)
        k += 1
    gm.graph.lint()
    gm.recompile()
    return k


def _drop_unused_attributes(gm: torch.fx.GraphModule) -> int:
    """Delete the parameters and buffers no ``get_attr`` of the graph reads; returns their bytes. After
    ``convert_pt2e`` the graph reads the int8 weights it folded, but the module still holds the float32 ones, and
    ``torch.export`` lifts every parameter: the int8 program carried all of them as unused constants
    (movinet_a0_stream: an 18.9 MB .pte whose int8 weights take 3.8 MB, beside the 15.1 MB fp32 program)."""
    read = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    dropped = 0
    for name, t in [*gm.named_parameters(), *gm.named_buffers()]:
        if name in read:
            continue
        owner, _, attr = name.rpartition(".")
        delattr(gm.get_submodule(owner), attr)
        dropped += t.numel() * t.element_size()
    return dropped


def quantize(graph: torch.nn.Module, spec: IOSpec, args: tuple[torch.Tensor, ...], precision: str,
             calibration: Calibration | None) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """The exported program of ``graph`` quantized in ``precision``, and the manifest's precision details."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if precision != "int8":
        raise ValueError(f"executorch has no precision {precision!r}")
    gm = torch.export.export(graph, args, strict=False).module()
    frozen = _freeze_new_tensors(gm)
    state = _state_nodes(gm, spec) if spec.states else set()
    tails = {n.name for n in _output_tails(gm, spec)} - state
    keep = state | tails
    pads = _pad_feeders(gm)
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer

    config = _percentile_config(get_symmetric_quantization_config(is_per_channel=True))
    xnn = XNNPACKQuantizer().set_global(config)

    def allowed(n: torch.fx.Node) -> bool:
        return n.name not in keep and n.name not in pads

    xnn.set_filter_function(allowed)
    prepared = prepare_pt2e(gm, ComposableQuantizer([xnn, _int8_extras(config, allowed)]))
    details: dict[str, Any] = {"tool": f"XNNPACKQuantizer (PT2E, torchao {package_version('torchao')})",
                               "state_path_float32_ops": len(state),
                               "logits_tail_float32_ops": len(tails), "pad_input_float32_ops": len(pads),
                               "constants_frozen": frozen,
                               "weights": "int8 symmetric, per output channel",
                               "activations": "int8 asymmetric per tensor",
                               "compute": "int8 (XNNPACK), float32 where the quantizer has no int8 pattern"}
    if calibration is None:
        raise ValueError("int8 needs calibration samples")
    full = _keep_full_range(prepared, spec)
    details["calibration_ranges"] = (f"the {100 - RANGE_PERCENTILE:g}-{RANGE_PERCENTILE:g} percentiles of every "
                                     f"activation over the calibration ({full} kept at the global min/max: the "
                                     "image input and the logits)")
    with torch.no_grad():
        for s in calibration.samples:
            prepared(*(torch.from_numpy(s[n]) for n in spec.input_names))
    converted = convert_pt2e(prepared)
    details["float_weights_dropped_bytes"] = _drop_unused_attributes(converted)
    with torch.no_grad():
        return torch.export.export(converted, args, strict=False), details
