"""Peak resident memory of one runtime, measured in a fresh subprocess per runtime.

The worker imports everything first (Python, numpy, torch, the runtime library), resets the kernel's high-water
mark (``/proc/self/clear_refs`` = 5, Linux) and records its resident set as the baseline; then it loads the model
(session / interpreter / program / PyTorch module), runs a few steps carrying state, and reads the high-water mark
``VmHWM``. ``runtime_peak_rss_bytes`` = high-water mark - baseline: what loading and running the model cost on
top of an idle interpreter. (The parent's ``RUSAGE_CHILDREN`` / ``wait4`` ``ru_maxrss`` is not used: a forked
child's high-water mark starts at the parent's size, which is larger than the runtime's.)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from stexport.spec import IOSpec

METHOD = "fresh subprocess per runtime; /proc/self VmHWM after a high-water reset, minus VmRSS after imports"


def measure(*, runtime: str, spec: IOSpec, threads: int, steps: int, artifact: Path | None = None,
            model_file: Path | None = None, sys_path: list[str] | None = None, timeout: float = 900.0
            ) -> dict[str, Any]:
    """Run the worker for ``runtime`` ("pytorch" with ``model_file``, or a target name with ``artifact``)."""
    with tempfile.TemporaryDirectory(prefix="stexport-rss-") as tmp:
        result_file = Path(tmp) / "result.json"
        job = {"runtime": runtime, "spec": spec.to_json(), "threads": threads, "steps": steps,
               "artifact": str(artifact) if artifact else None, "model_file": str(model_file) if model_file else None,
               "sys_path": sys_path or [], "result": str(result_file)}
        job_file = Path(tmp) / "job.json"
        job_file.write_text(json.dumps(job))
        proc = subprocess.run([sys.executable, "-m", "stexport.benchmarks._rss_worker", str(job_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if proc.returncode != 0 or not result_file.exists():
            raise RuntimeError(f"memory worker for {runtime} exited with {proc.returncode}: {proc.stderr[-800:]}")
        result: dict[str, Any] = json.loads(result_file.read_text())
    result["method"] = METHOD
    return result
