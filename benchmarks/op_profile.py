"""What the per-operator profiles (`stexport.benchmarks.et_ops`, `stexport.benchmarks.ort_ops`) share: their
command line, the inputs they step a stream with, the rows they print and the JSON file they write."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from stexport.spec import IOSpec


def parse_args(argv: list[str] | None, *, module: str, doc: str, target: str, steps: int) -> argparse.Namespace:
    """``BUNDLE [--steps N] [--out DIR]`` for ``python -m stexport.benchmarks.<module>``, profiling ``target``."""
    p = argparse.ArgumentParser(prog=f"python -m stexport.benchmarks.{module}", description=doc.splitlines()[0])
    p.add_argument("bundle", type=Path, help=f"an exported <out>/<model>/{target}/ folder of a stream model")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--out", type=Path, help=f"write <model>_<precision>_{target}_ops.json here")
    return p.parse_args(argv)


def print_ops(ops: dict[str, dict[str, float]]) -> None:
    """One line per operator type: ms and calls per step."""
    for kind, g in ops.items():
        print(f"  {g['ms']:7.3f} ms  {g['count']:5g} x  {kind}")


def step_feeds(spec: IOSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random values for every input that is not a state (the frame): bytes for an integer input, standard normal
    values for a float one."""
    feeds = {}
    for i in spec.inputs:
        if i.name not in spec.state_names:
            x = rng.integers(0, 256, i.shape) if np.dtype(i.dtype).kind in "iu" else rng.standard_normal(i.shape)
            feeds[i.name] = x.astype(i.dtype)
    return feeds


def write_profile(res: dict[str, Any], out: Path, target: str) -> Path:
    """``res`` as ``<out>/<model>_<precision>_<target>_ops.json``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{res['model']}_{res['precision']}_{target}_ops.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    return path
