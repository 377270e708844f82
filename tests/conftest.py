"""Shared test helpers: the authors' reference fixtures (../shared/reference) and released-layout checkpoints."""

from __future__ import annotations

import json
import os
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("STX_FIXTURES", ROOT.parent / "shared" / "reference"))

torch.set_num_threads(int(os.environ.get("STX_TEST_THREADS", "2")))


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Per-frame steps of a small model are tiny ops: intra-op threads only add synchronisation (and stall badly on
    a busy machine), so those tests run on one thread."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def one_thread_per_module() -> Iterator[None]:
    """`one_thread` for a whole module (``pytestmark = pytest.mark.usefixtures(...)``), its module fixtures too."""
    with torch_threads(1):
        yield


def fill_value(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The fixtures' deterministic parameter rule (mirror of shared/reference/fill.py, checked in test_fixtures)."""
    shape = tuple(int(s) for s in shape)
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, np.int64)
    rng = np.random.default_rng(zlib.crc32(key.encode("utf-8")))
    x = np.asarray(rng.standard_normal(shape), dtype=np.float32)
    if key.endswith("running_var"):
        return np.asarray(1.0 + 0.2 * np.abs(x), dtype=np.float32)
    if key.endswith("running_mean"):
        return np.asarray(0.1 * x, dtype=np.float32)
    if len(shape) >= 2:
        return np.asarray(x / np.sqrt(float(np.prod(shape[1:]))), dtype=np.float32)
    if key.endswith("weight"):
        return np.asarray(1.0 + 0.1 * x, dtype=np.float32)
    return np.asarray(0.1 * x, dtype=np.float32)


def reference_input(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(tuple(shape)).astype(np.float32)


def load_fixture(rel: str) -> dict:
    path = REFERENCE / rel
    if not path.is_file():
        pytest.fail(f"reference fixture {path} is missing (set STX_FIXTURES to the shared/reference folder)")
    return json.loads(path.read_text())


def filled_state_dict(fix: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: torch.from_numpy(fill_value(k, shape)).to(getattr(torch, dt))
            for k, shape, dt in fix["state_dict"]}


def fill_model(model: torch.nn.Module) -> torch.nn.Module:
    """Give a model without a fixture the fixtures' deterministic parameters (by its own keys)."""
    sd = model.state_dict()
    model.load_state_dict({k: torch.from_numpy(fill_value(k, tuple(v.shape))).to(v.dtype) for k, v in sd.items()})
    return model


def clip_input(fix: dict) -> np.ndarray:
    """The fixture input as NCTHW float32, whatever layout the fixture recorded."""
    shape = fix["input"]["shape"]
    x = reference_input(shape, fix["input"]["seed"])
    layout = fix["input"]["layout"]
    if layout.startswith("N,C,T,H,W") or layout.startswith("[N, C=3, T"):
        return x
    if layout.startswith("T, 3, H, W"):
        return np.ascontiguousarray(x.transpose(1, 0, 2, 3)[None])
    n, ct, h, w = shape
    return np.ascontiguousarray(x.reshape(n, ct // 3, 3, h, w).transpose(0, 2, 1, 3, 4))


def probe_values(t: torch.Tensor, probe: dict) -> np.ndarray:
    """The fixture probe's sampled values from a module output (C-order flatten, batch included)."""
    return t.detach().reshape(-1).numpy()[np.asarray(probe["idx"], dtype=np.int64)]


def max_err(a: object, b: object) -> float:
    a_ = np.asarray(a, np.float64)
    b_ = np.asarray(b, np.float64)
    return float(np.max(np.abs(a_.reshape(b_.shape) - b_)))


def stream_logits(model, clip: torch.Tensor) -> torch.Tensor:
    """Per-frame logits ``[N, T, K]`` by stepping ``model`` over NCTHW ``clip`` from ``init_state``."""
    state = model.init_state(batch_size=clip.shape[0])
    outs = []
    with torch.no_grad():
        for t in range(clip.shape[2]):
            logits, state = model.step(clip[:, :, t].contiguous(), state)
            outs.append(logits)
    return torch.stack(outs, 1)


def write_checkpoint(path: Path, obj: object) -> Path:
    torch.save(obj, path)
    return path




def released_checkpoint(fix: dict, layout: str, path: Path) -> Path:
    """The fixture's parameters saved in one of the authors' released checkpoint layouts."""
    sd = filled_state_dict(fix)
    if layout == "plain":  # MoViNet port, online TSM, bLVNet-TAM release
        obj: object = sd
    elif layout == "module_state_dict":  # TSM release, training scripts (DataParallel)
        obj = {"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 100, "best_prec1": 0.0}
    elif layout == "mmengine":  # SqueezeTime release
        obj = {"meta": {"epoch": 100, "mmengine_version": "0.10.3"}, "state_dict": sd,
               "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0]}]},
               "message_hub": {"runtime_info": {"epoch": 100}}}
    else:
        raise ValueError(layout)
    torch.save(obj, path)
    return path


sys.path.insert(0, str(Path(__file__).resolve().parent))
