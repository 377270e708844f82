"""ExecuTorch: torch.export, lowered with the XNNPACK partitioner to a ``.pte``; method ``forward`` takes the inputs
positionally in manifest order and returns the outputs in manifest order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from stexport.manifest import package_version
from stexport.spec import GraphModule, IOSpec


def convert(graph: GraphModule, spec: IOSpec, path: Path, *, precision: str,
            metadata: dict[str, str]) -> dict[str, Any]:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    example = spec.example_inputs()
    with torch.no_grad():
        program = torch.export.export(graph, tuple(example[n] for n in spec.input_names), strict=False)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        et = lowered.to_executorch()
    path.write_bytes(et.buffer)
    delegated = sum(1 for n in lowered.exported_program().graph.nodes
                    if n.op == "call_function" and "executorch_call_delegate" in str(n.target))
    return {"converter": "torch.export + executorch (XNNPACK)", "executorch": package_version("executorch"),
            "method": "forward", "delegate_calls": delegated}



class Runner:
    """The ExecuTorch Python runtime, method ``forward``."""

    name = "executorch"

    def __init__(self, path: Path, spec: IOSpec, *, threads: int = 1) -> None:
        from executorch.runtime import Runtime

        self.method = Runtime.get().load_program(str(path)).load_method("forward")
        self.spec = spec
        self.version = package_version("executorch")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.spec.input_names]
        outs = self.method.execute(args)
        return {n: o.detach().numpy().copy() for n, o in zip(self.spec.output_names, outs)}
