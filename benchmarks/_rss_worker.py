"""Subprocess body of `stexport.benchmarks.memory.measure` (``python -m stexport.benchmarks._rss_worker JOB``)."""

from __future__ import annotations

import gc
import importlib
import json
import sys
from pathlib import Path
from typing import Any

# runtime modules to import before the baseline, so the baseline holds the libraries and not the model
RUNTIME_IMPORTS = {"onnx": ("onnxruntime",), "tflite": ("ai_edge_litert.interpreter",),
                   "executorch": ("executorch.runtime",), "coreml": ("coremltools",), "pytorch": ()}


def _status(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` in bytes (Linux); elsewhere the process peak from getrusage for both."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main(job_file: str) -> int:
    job: dict[str, Any] = json.loads(Path(job_file).read_text())
    sys.path[:0] = job["sys_path"]
    import numpy as np
    import torch

    from stexport.parity import run_loop, torch_runner
    from stexport.spec import GraphModule, IOSpec

    torch.set_num_threads(job["threads"])
    runtime = job["runtime"]
    spec = IOSpec.from_json(job["spec"])
    if runtime == "pytorch":
        import stexport.models  # noqa: F401  (registered classes importable for unpickling)
    else:
        from stexport.targets import get_target

        impl = get_target(runtime).load()
        for mod in RUNTIME_IMPORTS.get(runtime, ()):
            importlib.import_module(mod)
    g = np.random.default_rng(0)
    steps = [{t.name: g.standard_normal(t.shape).astype(np.float32)} for t in spec.inputs if t.role in ("frame", "clip")
             for _ in range(job["steps"])]
    gc.collect()
    reset = _reset_high_water_mark()
    baseline = _status("VmRSS")
    if runtime == "pytorch":
        model = torch.load(job["model_file"], weights_only=False).eval()
        run = torch_runner(GraphModule(model, spec).eval())
    else:
        run = impl.Runner(Path(job["artifact"]), spec, threads=job["threads"]).run
    loaded = _status("VmRSS")
    run_loop(run, spec, steps)
    peak = _status("VmHWM")
    result = {"steps": job["steps"], "hwm_reset": reset, "baseline_rss_bytes": baseline, "loaded_rss_bytes": loaded,
              "process_peak_rss_bytes": peak, "runtime_peak_rss_bytes": max(0, peak - baseline)}
    Path(job["result"]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
