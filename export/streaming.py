"""Stepping an exported stream model frame by frame, its state carried from each step to the next.

``Runner.run(feeds)`` is stateless: the caller passes every state in and takes every ``<state>_out`` back as
numpy arrays, so each step copies the whole state out of the runtime and back in (2.7 MB per frame for MoViNet-A0
at 172 px). An app keeps the state in the runtime's own buffers instead and, after a step, feeds the output
buffers as the next step's inputs (ping-pong, no copy). ``Runner.stepper()`` gives that loop:

    stepper = open_stream(bundle)          # a bundle folder; zero state (the manifest's init)
    for frame in frames:                   # float32 [N, 3, H, W], preprocessed (integer boundary: uint8 [1, H, W, 3])
        logits = stepper.step({"frame": frame})
    stepper.state()                        # the current state as numpy arrays, by state name
    stepper.reset()                        # zero state again

`open_stream` checks every feed against the manifest (`CheckedStream`: names, shape, dtype, finite values) and
the artifact against the manifest's sha256 before it runs.

LiteRT (``CompiledModel`` tensor buffers) and ONNX Runtime (``IOBinding`` with ``OrtValue``) keep the state in
place; ExecuTorch passes each step's state outputs back as the next inputs where the program allows it (it writes
every state output after its last read of the input), else copies them into tensors the stepper owns
(`stexport.targets._executorch.TensorStepper`); any other runner falls back to `CopyStepper`. A clip-form runner
steps clips (no state).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from stexport.errors import InputError
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
        self._state = {s.name: np.asarray(out[s.output], np.dtype(s.dtype)) for s in self.spec.states}
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
    manifest; ``runner.run(feeds) -> outputs`` by tensor name. The artifact's sha256 must match the manifest's
    (`stexport.integrity`): a truncated or modified copy raises `BundleError` naming the file."""
    from stexport.integrity import checked_artifact, read_manifest
    from stexport.targets import get_target

    manifest = read_manifest(bundle)
    spec = IOSpec.from_json(manifest)
    artifact = checked_artifact(bundle, manifest)
    runner = get_target(manifest["target"]).load().Runner(artifact, spec, threads=threads)
    return runner, spec, preprocess_of(manifest)


def preprocess_of(manifest: dict[str, Any]) -> Any:
    """The manifest's ``preprocessing`` as a `Preprocess` (what `stexport.frames.preprocess` applies)."""
    from stexport.models._registry import Preprocess

    p = manifest["preprocessing"]
    return Preprocess(size=tuple(p["size"]), value_range=tuple(p["value_range"]), mean=tuple(p["mean"]),
                      std=tuple(p["std"]), resize=p.get("resize", Preprocess.resize),
                      resize_shorter=p.get("resize_shorter"), fps=p.get("fps"),
                      frame_stride=int(p.get("frame_stride", 1)))


class CheckedStream:
    """A `Stepper` that checks every feed against the manifest before the runtime sees it.

    ``step(feeds)``: ``feeds`` must hold exactly the non-state inputs (``{"frame": float32 [1, 3, H, W]}``; with an
    integer boundary ``{"frame": uint8 [1, H, W, 3]}``, raw RGB; or ``{"clip": ...}`` for a clip-form bundle), each
    a numpy array of the manifest's shape and dtype, and finite.
    Anything else raises `InputError` saying what was expected, before the step: the state is left as it was.
    The checks are cheap (a key set, a shape tuple, a dtype, one ``isfinite`` pass over the frame).
    ``reset()`` starts the stream again at zero state (each state at its init: an int8 state at its zero point).
    """

    def __init__(self, make: Callable[[], Stepper], spec: IOSpec) -> None:
        self._make, self.spec = make, spec
        states = set(spec.state_names)
        fed = [t for t in spec.inputs if t.name not in states]
        self._expect = {t.name: (tuple(t.shape), np.dtype(t.dtype)) for t in fed}
        self._names = frozenset(self._expect)
        self._raw = any(d == np.uint8 for _, d in self._expect.values())  # an integer boundary (stexport.boundary)
        self._inner = make()

    def _refuse(self, what: str) -> InputError:
        want = ", ".join(f"{n!r}: {np.dtype(d).name} {list(s)}" for n, (s, d) in self._expect.items())
        how = "raw RGB bytes, NHWC: the preprocessing is in the graph" if self._raw else \
            "preprocessed as the manifest says"
        return InputError(f"{what}; this stream takes {{{want}}} ({how}); the state is unchanged")

    def step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The non-state inputs -> logits ``[1, K]``; the state advances inside the runtime."""
        if not isinstance(feeds, Mapping):
            raise self._refuse(f"step() takes a dict of named arrays, got {type(feeds).__name__}")
        if feeds.keys() != self._names:
            raise self._refuse(f"step() got inputs {sorted(map(str, feeds))}")
        for name, (shape, dtype) in self._expect.items():
            x = feeds[name]
            if not isinstance(x, np.ndarray):
                raise self._refuse(f"{name!r} is a {type(x).__name__}, not a numpy array")
            if x.shape != shape:
                raise self._refuse(f"{name!r} has shape {list(x.shape)}")
            if x.dtype != dtype:
                raise self._refuse(f"{name!r} has dtype {x.dtype}")
            if not np.isfinite(x).all():
                raise self._refuse(f"{name!r} holds NaN or infinite values")
        return self._inner.step(feeds)

    def state(self) -> dict[str, np.ndarray]:
        """The current state by name (a copy)."""
        return self._inner.state()

    def reset(self) -> None:
        """Back to zero state (the manifest's init), as after `open_stream`."""
        self._inner = self._make()


def open_stream(bundle: str | Path, *, threads: int = 1) -> CheckedStream:
    """The bundle's artifact in its runtime, stepped with its state kept there (see the module docstring), behind
    the manifest's input checks (`CheckedStream`). A bundle whose artifact does not match the manifest's sha256 is
    refused with `BundleError`."""
    runner, spec, _ = load_bundle_runner(bundle, threads=threads)
    return CheckedStream(lambda: stepper(runner), spec)
