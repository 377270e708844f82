"""What the per-operator profiles (`stexport.benchmarks.et_ops`, `stexport.benchmarks.ort_ops`) share: the inputs
they step a stream with and the JSON file they write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from stexport.spec import IOSpec


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
