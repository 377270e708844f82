"""``stexport verify``: replay a bundle's golden.json through its artifact in this machine's runtime.

The artifact's sha256 is checked first. Each golden step's frames go through the manifest's preprocessing, the
state is carried from step to step, and the logits are compared with the recorded ones within the manifest's
tolerance (``parity.tolerance.logits_max_abs``; the precision's gate tolerance when the export skipped the gate).
Core ML off macOS: the artifact's spec (names, shapes, dtypes) is checked and the model is not executed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stexport.errors import BundleError
from stexport.integrity import checked_artifact, read_manifest


@dataclass
class StepCheck:
    step: int
    output: str
    max_abs_err: float
    tolerance: float
    top1: str
    top1_expected: str

    @property
    def passed(self) -> bool:
        return bool(self.max_abs_err <= self.tolerance)


@dataclass
class Verdict:
    """What `verify` found: ``executed`` False when the runtime is not available here (Core ML off macOS)."""

    runtime: str
    executed: bool
    steps: list[StepCheck] = field(default_factory=list)
    note: str = ""

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.steps)

    @property
    def first_failure(self) -> StepCheck | None:
        return next((s for s in self.steps if not s.passed), None)


def golden_feeds(golden: dict[str, Any], manifest: dict[str, Any]) -> list[dict[str, np.ndarray]]:
    """The non-state input of every golden step (``frame`` or the packed ``clip``), preprocessed per manifest (a uint8
    frame input, `stexport.boundary`: the raw bytes, the preprocessing being in the graph)."""
    from stexport.boundary import frame_feed
    from stexport.frames import preprocess
    from stexport.models import pack_clip
    from stexport.spec import IOSpec
    from stexport.streaming import preprocess_of

    pre = preprocess_of(manifest)
    spec = IOSpec.from_json(manifest)
    fmt = golden["frame_format"]
    h, w = int(fmt["height"]), int(fmt["width"])
    feeds = []
    for step in golden["steps"]:
        raw = np.stack([np.frombuffer(base64.b64decode(b), np.uint8).reshape(h, w, 3) for b in step["frames_u8_b64"]])
        if manifest["form"] == "clip":
            x = preprocess(raw, pre)
            layout = next(t.get("layout", "") for t in manifest["inputs"] if t["name"] == "clip")
            feeds.append({"clip": pack_clip(x.transpose(0, 1).unsqueeze(0), layout).numpy()})
        else:
            feeds.append({"frame": frame_feed(raw[0], spec, pre)})
    return feeds


def _tolerance(manifest: dict[str, Any], expected: np.ndarray) -> float:
    tol = manifest.get("parity", {}).get("tolerance", {}).get("logits_max_abs")
    if tol is None:
        from stexport.parity import tolerance

        tol = tolerance(manifest["precision"], expected)["logits_max_abs"]
    return float(tol)


def verify(bundle: str | Path, *, threads: int = 1) -> Verdict:
    """Check the artifact's checksum, then replay golden.json (see the module docstring)."""
    from stexport.parity import run_loop
    from stexport.quiet import captured_output
    from stexport.spec import IOSpec
    from stexport.targets import get_target

    folder = Path(bundle)
    manifest = read_manifest(folder)
    artifact = checked_artifact(folder, manifest)
    try:
        golden = json.loads((folder / "golden.json").read_text())
        steps = golden["steps"]
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"{folder / 'golden.json'} cannot be read ({type(e).__name__}: {e}); re-export") from None
    spec = IOSpec.from_json(manifest)
    impl = get_target(manifest["target"]).load()
    try:
        with captured_output():  # the runtime's start-up chatter
            runner = impl.Runner(artifact, spec, threads=threads)
    except RuntimeError as e:  # Core ML off macOS
        if type(e).__name__ != "RuntimeUnavailable":
            raise
        try:
            checked = impl.check_spec(artifact, spec)
        except RuntimeError as bad:
            raise BundleError(f"{artifact}: {bad}") from None
        return Verdict(runtime=str(manifest["target"]), executed=False,
                       note=f"spec checked: {len(checked['inputs'])} inputs and {len(checked['outputs'])} outputs "
                            f"match the manifest (names, shapes, float32); the model was not executed: {e}")
    labels = _labels(folder, manifest)
    feeds = golden_feeds(golden, manifest)
    with captured_output():
        trace = run_loop(runner.run, spec, feeds)
    expected_all = np.asarray([s["logits"] for s in steps], np.float64)
    tol = _tolerance(manifest, expected_all)
    verdict = Verdict(runtime=f"{getattr(runner, 'name', manifest['target'])} {getattr(runner, 'version', '')}"
                      .strip(), executed=True)
    for i, (step, out) in enumerate(zip(steps, trace.outputs)):
        want = np.asarray(step["logits"], np.float64)
        got = np.asarray(out["logits"], np.float64).reshape(-1)
        err = float(np.max(np.abs(got - want))) if got.shape == want.shape else float("inf")
        verdict.steps.append(StepCheck(i, "logits", err, tol, labels[int(np.argmax(got))],
                                       labels[int(np.argmax(want))]))
    return verdict


def _labels(folder: Path, manifest: dict[str, Any]) -> list[str]:
    from stexport.predict import read_labels

    labels = read_labels(folder, manifest)
    n = int(manifest["model"]["num_classes"])
    return labels if len(labels) >= n else [*labels, *(str(i) for i in range(len(labels), n))]
