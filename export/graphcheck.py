"""Structural facts about exported graphs: highest tensor rank, operator counts, delegate partitions.

Used by tests (4D-only stream graphs for mobile GPUs) and benchmarks (ops, XNNPACK partitions).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any


def onnx_max_rank(path: Path) -> int:
    """Highest rank of any tensor in an ONNX graph (inputs, outputs, intermediates after shape inference,
    initializers and constants; local functions inlined, subgraphs walked)."""
    import onnx
    from onnx import inliner

    model = onnx.shape_inference.infer_shapes(inliner.inline_local_functions(onnx.load(str(path))))
    ranks: list[int] = []

    def walk(g: Any) -> None:
        for v in list(g.input) + list(g.output) + list(g.value_info):
            if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
                ranks.append(len(v.type.tensor_type.shape.dim))
        ranks.extend(len(t.dims) for t in g.initializer)
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    ranks.append(len(a.t.dims))
                for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    walk(sub)

    walk(model.graph)
    return max(ranks)


def onnx_ops(path: Path) -> Counter[str]:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _tflite_model(path: Path) -> Any:
    from ai_edge_litert import schema_py_generated as fb

    return fb.Model.GetRootAsModel(Path(path).read_bytes(), 0)


def tflite_max_rank(path: Path) -> int:
    """Highest rank of any tensor in any subgraph of a .tflite flatbuffer."""
    m = _tflite_model(path)
    return max(m.Subgraphs(g).Tensors(i).ShapeLength()
               for g in range(m.SubgraphsLength()) for i in range(m.Subgraphs(g).TensorsLength()))


def tflite_ops(path: Path) -> Counter[str]:
    """Builtin operator counts of the main subgraph."""
    from ai_edge_litert import schema_py_generated as fb

    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    m = _tflite_model(path)
    sg = m.Subgraphs(0)
    codes = [max(m.OperatorCodes(i).BuiltinCode(), m.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(m.OperatorCodesLength())]
    return Counter(names.get(codes[sg.Operators(i).OpcodeIndex()], "CUSTOM") for i in range(sg.OperatorsLength()))


def tflite_partitions(path: Path, *, threads: int = 1) -> dict[str, int]:
    """How the XNNPACK delegate splits the graph: operators in the model and delegate partitions (one partition
    means the whole graph runs inside XNNPACK; every extra one is a hand-off to the built-in kernels)."""
    from stexport.targets._tflite import interpreter_class

    it = interpreter_class()(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    nodes = it._get_ops_details()  # the model's nodes, then one DELEGATE node per partition
    partitions = sum(1 for o in nodes if o["op_name"] == "DELEGATE")
    return {"ops_total": sum(tflite_ops(path).values()), "delegate_partitions": partitions}
