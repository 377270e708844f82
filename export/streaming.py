"""Stepping an exported stream model frame by frame, its state carried from each step to the next.

``Runner.run(feeds)`` is stateless: the caller passes every state in and takes every ``<state>_out`` back as
numpy arrays, so each step copies the whole state out of the runtime and back in (2.7 MB per frame for MoViNet-A0
at 172 px). An app keeps the state in the runtime's own buffers instead and, after a step, feeds the output
buffers as the next step's inputs (ping-pong, no copy). ``Runner.stepper()`` gives that loop:

    stepper = open_stream(bundle)          # a bundle folder; zero state (the manifest's init)
    for frame in frames:                   # float32 [N, 3, H, W], preprocessed
        logits = stepper.step({"frame": frame})
    stepper.state()                        # the current state as numpy arrays, by state name

LiteRT (``CompiledModel`` tensor buffers) and ONNX Runtime (``IOBinding`` with ``OrtValue``) keep the state in
place; any other runner falls back to `CopyStepper`. A clip-form runner steps clips (no state).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stexport.spec import IOSpec

RunFn = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


class Stepper(Protocol):
    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The non-state inputs (``frame``, or ``clip``) -> logits; the state advances inside."""
        ...

    def state(self) -> dict[str, np.ndarray]:
        """The current state by name (a copy)."""
        ...


class CopyStepper:
    """Through ``run``: the state goes out to numpy and back in every step (what any runner can do)."""

    def __init__(self, run: RunFn, spec: IOSpec) -> None:
        self._run, self.spec = run, spec
        self._state = spec.zero_state()

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        out = self._run({**feeds, **self._state})
        self._state = {s.name: np.asarray(out[s.output], np.float32) for s in self.spec.states}
        return np.asarray(out["logits"], np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self._state.items()}


def stepper(runner: object) -> Stepper:
    """``runner.stepper()`` where the runtime keeps the state in place, else a `CopyStepper` over ``runner.run``."""
    make = getattr(runner, "stepper", None)
    if make is not None:
        return make()
    return CopyStepper(runner.run, runner.spec)  # type: ignore[attr-defined]


def load_bundle_runner(bundle: str | Path, *, threads: int = 1) -> tuple[Any, IOSpec, Any]:
    """(runner, spec, preprocessing `Preprocess`) of an exported bundle folder ``<out>/<model>/<target>/``, from its
    manifest; ``runner.run(feeds) -> outputs`` by tensor name."""
    from stexport.models._registry import Preprocess
    from stexport.targets import get_target

    folder = Path(bundle)
    manifest = json.loads((folder / "manifest.json").read_text())
    spec = IOSpec.from_json(manifest)
    p = manifest["preprocessing"]
    pre = Preprocess(size=tuple(p["size"]), value_range=tuple(p["value_range"]), mean=tuple(p["mean"]),
                     std=tuple(p["std"]))
    runner = get_target(manifest["target"]).load().Runner(folder / manifest["artifact"]["file"], spec,
                                                          threads=threads)
    return runner, spec, pre


def open_stream(bundle: str | Path, *, threads: int = 1) -> Stepper:
    """The bundle's artifact in its runtime, stepped with its state kept there (see the module docstring)."""
    return stepper(load_bundle_runner(bundle, threads=threads)[0])
