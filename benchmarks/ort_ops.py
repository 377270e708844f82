"""Where an ONNX Runtime stream step goes, per operator type, from ONNX Runtime's own profiler.

``python -m stexport.benchmarks.ort_ops BUNDLE [--steps 100] [--out DIR]``

``BUNDLE`` is an exported ``<out>/<model>/onnx/`` folder. The model is loaded as stexport runs it (1 thread, spinning
off) with ONNX Runtime's profiling on, steps ``--steps`` frames of the app's loop (`BindingStepper`: the state
bound as ``OrtValue``s, never copied) after `WARMUP` untimed ones, and sums each kernel's time per step by
operator type as ONNX Runtime ran it
(after its graph optimizations: ``QLinearConv``, ``QLinearMul``, ``QGemm``... for an int8 model). The profiler
records every kernel call, which costs time of its own: compare the rows of one profile with each other (and the
operator counts across models), not its total with an unprofiled step. The ExecuTorch counterpart is
`stexport.benchmarks.et_ops`.

Writes ``<out>/<model>_<precision>_onnx_ops.json`` when ``--out`` is given.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from stexport.benchmarks.op_profile import parse_args, print_ops, step_feeds, write_profile

#: steps run before the profiled ones (their events, the first run's allocations among them, are left out)
WARMUP = 5


def group_kernels(events: list[dict[str, Any]], steps: int) -> dict[str, dict[str, float]]:
    """ONNX Runtime profiler events -> per operator type ``{"ms": per step, "count": per step}``, largest first.
    Only the kernels' own events (``"<node>_kernel_time"``, category ``Node``) count."""
    us: dict[str, float] = {}
    calls: dict[str, int] = {}
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            op = str(e["args"]["op_name"])
            us[op] = us.get(op, 0.0) + float(e["dur"])
            calls[op] = calls.get(op, 0) + 1
    out = {op: {"ms": t / 1e3 / steps, "count": calls[op] / steps} for op, t in us.items()}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["ms"]))


def profile(bundle: Path, *, steps: int = 100) -> dict[str, Any]:
    """Per-operator-type times of ``steps`` stream steps of the ONNX model in ``bundle`` (see the module docstring)."""
    import onnxruntime as ort

    from stexport.integrity import checked_artifact, read_manifest
    from stexport.spec import IOSpec
    from stexport.targets._onnx import BindingStepper, session_options

    manifest = read_manifest(bundle)
    if manifest["target"] != "onnx":
        raise ValueError(f"{bundle} is a {manifest['target']} bundle; give an onnx one")
    spec = IOSpec.from_json(manifest)
    if not spec.states:
        raise ValueError(f"{bundle} is a clip model; give a stream (frame-by-frame) bundle")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        so = session_options(1)
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "step")
        session = ort.InferenceSession(str(checked_artifact(bundle, manifest)), so,
                                       providers=["CPUExecutionProvider"])
        stepper = BindingStepper(session, spec)
        for _ in range(WARMUP + steps):
            stepper.step(step_feeds(spec, rng))
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: float(e["ts"]))
    if len(runs) != WARMUP + steps:
        raise RuntimeError(f"ONNX Runtime's profile holds {len(runs)} runs, not the {WARMUP + steps} stepped")
    start = float(runs[WARMUP]["ts"])
    timed = [e for e in events if float(e.get("ts", 0)) >= start]
    return {"model": manifest["model"]["name"], "precision": manifest.get("precision", "fp32"), "steps": steps,
            "runtime": f"onnxruntime {ort.__version__} (CPU), 1 thread, its profiler",
            "run_ms": sum(float(e["dur"]) for e in runs[WARMUP:]) / 1e3 / steps,
            "op_types": group_kernels(timed, steps)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, module="ort_ops", doc=__doc__ or "", target="onnx", steps=100)
    res = profile(args.bundle, steps=args.steps)
    print(f"{res['model']} {res['precision']}: run {res['run_ms']:.3f} ms (profiled; mean over {res['steps']} "
          "steps); per step:")
    print_ops(res["op_types"])
    if args.out:
        print(f"wrote {write_profile(res, args.out, 'onnx')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
