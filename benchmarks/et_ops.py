"""Where an ExecuTorch program's stream step goes, per XNNPACK operator type, from ExecuTorch's own profiler.

``python -m stexport.benchmarks.et_ops BUNDLE [--steps 30] [--out DIR]``

``BUNDLE`` is an exported ``<out>/<model>/executorch/`` folder. The program is loaded with event tracing (ETDump;
the pip build of ExecuTorch records each XNNPACK operator of the delegate), runs ``--steps`` steps of the app's loop
(each state output fed back, 1 thread), and ExecuTorch's ``Inspector`` gives every operator's median time over
those steps. Operators are grouped by XNNPACK's name for them (``Transpose (ND, X8)``, ``Multiply (ND)``,
``Fully Connected (NC, QS8, QC8W) GEMM``...); ExecuTorch's portable kernels outside the delegate are listed
apart. The tracing itself costs time per operator (10-15% of MoViNet-A0's step on a quiet machine), so compare
the rows of one profile with each other (and the operator counts across programs), not its total with an untraced
step.

Writes ``<out>/<model>_<precision>_executorch_ops.json`` when ``--out`` is given.
"""

from __future__ import annotations

import re
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from stexport.benchmarks.op_profile import parse_args, print_ops, step_feeds, write_profile

#: ExecuTorch's own events around operators: totals, not operators
TOTALS = ("Method::execute", "DELEGATE_CALL", "OPERATOR_CALL")


def op_kind(event: str) -> str:
    """``"Transpose (ND, X8) #16"`` -> ``"Transpose (ND, X8)"``."""
    return re.sub(r"\s*#\d+$", "", event)


def group_ops(events: list[tuple[str, float]]) -> dict[str, dict[str, float]]:
    """``(event name, median ms)`` pairs -> per operator type ``{"ms": total, "count": n}``, largest first;
    ExecuTorch's totals (`TOTALS`) are left out."""
    out: dict[str, dict[str, float]] = {}
    for name, ms in events:
        if name in TOTALS:
            continue
        g = out.setdefault(op_kind(name), {"ms": 0.0, "count": 0})
        g["ms"] += ms
        g["count"] += 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["ms"]))


def profile(bundle: Path, *, steps: int = 30) -> dict[str, Any]:
    """Per-operator-type times of ``steps`` stream steps of the ExecuTorch program in ``bundle`` (see the module
    docstring)."""
    from executorch.devtools import Inspector
    from executorch.extension.pybindings import portable_lib

    from stexport.integrity import checked_artifact, read_manifest
    from stexport.quiet import captured_output
    from stexport.spec import IOSpec
    from stexport.targets._executorch import TensorStepper, program_facts, use_threads

    manifest = read_manifest(bundle)
    if manifest["target"] != "executorch":
        raise ValueError(f"{bundle} is a {manifest['target']} bundle; give an executorch one")
    spec = IOSpec.from_json(manifest)
    use_threads(1)
    artifact = checked_artifact(bundle, manifest)
    module = portable_lib._load_for_executorch(str(artifact), enable_etdump=True, debug_buffer_size=0)
    # the app's loop (`TensorStepper`), over the traced module instead of `executorch.runtime.Method`
    channels_last, in_place = program_facts(artifact, spec)
    stepper = TensorStepper(partial(module.forward, clone_outputs=False), spec, channels_last=channels_last,
                            in_place=in_place)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        stepper.step(step_feeds(spec, rng))
    with tempfile.TemporaryDirectory() as tmp, captured_output():
        path = Path(tmp) / "step.etdp"
        module.write_etdump_result_to_file(str(path))
        table = Inspector(etdump_path=str(path)).to_dataframe()
    table = table[table["event_block_name"] == "Execute"]  # not the program's loading
    rows = [(str(e), float(ms), bool(d)) for e, ms, d in zip(table["event_name"], table["p50 (ms)"],
                                                          table["is_delegated_op"])]
    return {"model": manifest["model"]["name"], "precision": manifest.get("precision", "fp32"), "steps": steps,
            "runtime": "executorch (XNNPACK), 1 thread, ETDump",
            "execute_ms": sum(ms for e, ms, _ in rows if e == "Method::execute"),
            "delegate_calls_ms": sum(ms for e, ms, _ in rows if e == "DELEGATE_CALL"),
            "op_types": group_ops([(e, ms) for e, ms, d in rows if d]),
            "portable_kernels": group_ops([(e, ms) for e, ms, d in rows if not d and e.startswith("native_call_")])}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, module="et_ops", doc=__doc__ or "", target="executorch", steps=30)
    res = profile(args.bundle, steps=args.steps)
    print(f"{res['model']} {res['precision']}: execute {res['execute_ms']:.3f} ms, delegate calls "
          f"{res['delegate_calls_ms']:.3f} ms (traced; medians over {res['steps']} steps)")
    for title, ops in (("XNNPACK operators", res["op_types"]), ("portable kernels", res["portable_kernels"])):
        print(f" {title}:")
        print_ops(ops)
    if args.out:
        print(f"wrote {write_profile(res, args.out, 'executorch')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
