"""motion7: the procedural dataset, and the trained models shipped with the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import stexport
from stexport.frames import preprocess
from stexport.models import get_entry
from stexport.motion7 import data as motion
from stexport.motion7.train import eval_clips, evaluate, module_logits

TRAINED = ("movinet_a0_stream_motion7", "tsm_mobilenetv2_online_motion7")
SUBSET = 105  # the first 105 test clips, 15 per class


pytestmark = pytest.mark.usefixtures("one_thread_per_module")  # small models: one thread is several times faster


@pytest.fixture(scope="module")
def subset() -> tuple[np.ndarray, np.ndarray]:
    return eval_clips(clips=SUBSET)


@pytest.fixture(scope="module", params=TRAINED)
def trained(request: pytest.FixtureRequest) -> torch.nn.Module:
    return stexport.create_model(request.param)


# ---- the dataset ----

def test_clips_are_deterministic_uint8_rgb() -> None:
    a, la = motion.motion_clip(3)
    b, lb = motion.motion_clip(3)
    assert a.dtype == np.uint8 and a.shape == (motion.FRAMES, motion.SIZE, motion.SIZE, 3)
    assert la == lb == 3 and np.array_equal(a, b)
    assert not np.array_equal(a, motion.motion_clip(3, split="train")[0])
    assert not np.array_equal(a, motion.motion_clip(3, seed=1)[0])
    assert not np.array_equal(a, motion.motion_clip(10)[0])  # same label, another clip
    long, _ = motion.motion_clip(3, frames=16, size=96)
    assert long.shape == (16, 96, 96, 3)
    _, labels = motion.motion_clips(range(14))
    assert labels.tolist() == [i % 7 for i in range(14)]


def test_model_input_is_the_manifest_preprocessing() -> None:
    clip, _ = motion.motion_clip(0)
    pre = get_entry(TRAINED[0]).preprocess
    x = motion.to_model_input(clip)
    assert x.shape == (1, 3, motion.FRAMES, motion.SIZE, motion.SIZE)
    assert torch.equal(x[0].transpose(0, 1), preprocess(clip, pre))


def test_single_frames_carry_no_label() -> None:
    """Where the shape is, how it is turned and how big it is in any one frame does not depend on the class
    (positions wrap around the frame; only the zoom class widens the size distribution a little)."""
    n, size = 2100, motion.SIZE
    geos = [motion.clip_geometry(i) for i in range(n)]
    labels = np.array([g.label for g in geos])
    for t in (0, motion.FRAMES - 1):
        centers = np.stack([g.center[t] for g in geos])
        angles = np.array([g.angle[t] for g in geos])
        radii = np.array([g.radius[t] for g in geos])
        for k in range(len(motion.CLASSES)):
            sel = labels == k
            assert np.all(np.abs(centers[sel].mean(0) - size / 2) < 4.5), (t, motion.CLASSES[k])
            assert abs(angles[sel].mean() - np.pi) < 0.45, (t, motion.CLASSES[k])
            assert abs(radii[sel].mean() - radii.mean()) < 1.0, (t, motion.CLASSES[k])
    # ... while the motion over the clip identifies it
    shift = np.stack([(g.center[1] - g.center[0] + size / 2) % size - size / 2 for g in geos])
    assert np.all(shift[labels == 0, 0] < -1) and np.all(shift[labels == 1, 0] > 1)
    assert np.all(shift[labels == 2, 1] < -1) and np.all(shift[labels == 3, 1] > 1)


# ---- the shipped trained models ----

@pytest.mark.parametrize("name", TRAINED)
def test_shipped_weights_are_small_float32_state_dicts(name: str) -> None:
    entry = get_entry(name)
    path = Path(stexport.models.__file__).parent / "weights" / str(entry.weights)
    assert path.is_file() and path.stat().st_size < 5_000_000
    sd = torch.load(path, map_location="cpu", weights_only=True)
    assert all(v.dtype in (torch.float32, torch.int64) for v in sd.values())
    assert entry.num_classes == 7 and entry.labels == "motion7.txt" and entry.streaming
    assert entry.accuracy is not None and entry.accuracy["top1"] >= 0.9
    labels = (Path(stexport.__file__).parent / "labels" / entry.labels).read_text().split()
    assert tuple(labels) == motion.CLASSES


def test_trained_model_reaches_its_recorded_accuracy(trained: torch.nn.Module,
                                                     subset: tuple[np.ndarray, np.ndarray]) -> None:
    entry = get_entry(trained.registry_name)
    acc = evaluate(trained, data=subset)
    assert acc >= entry.accuracy["top1"] - 0.08, acc


def test_streaming_equals_the_clip_forward(trained: torch.nn.Module) -> None:
    clips, _ = motion.motion_clips(range(7))
    x = motion.to_model_input(clips)
    clip_logits = module_logits(trained, x, streamed=False)
    step_logits = module_logits(trained, x, streamed=True)
    assert torch.max(torch.abs(clip_logits - step_logits)) < 1e-4


def test_the_label_comes_from_motion(trained: torch.nn.Module, subset: tuple[np.ndarray, np.ndarray]) -> None:
    """A still clip (one frame repeated) scores near chance; reversed clips are recognised as the reversed motion."""
    def still(clip: np.ndarray) -> np.ndarray:
        return np.repeat(clip[len(clip) // 2:len(clip) // 2 + 1], len(clip), axis=0)

    assert evaluate(trained, data=subset, transform=still) < 0.3
    assert evaluate(trained, data=subset, transform=lambda c: c[::-1], labels_map=motion.REVERSED) >= 0.9


def test_evaluate_takes_an_artifact_runner(trained: torch.nn.Module, subset: tuple[np.ndarray, np.ndarray]) -> None:
    """The runner path (what scores ONNX/TFLite/... artifacts), here with the traced graph run in PyTorch."""
    from types import SimpleNamespace

    from stexport.parity import torch_runner
    from stexport.spec import GraphModule, build_spec

    spec = build_spec(trained, form="stream")
    runner = SimpleNamespace(run=torch_runner(GraphModule(trained, spec).eval()), spec=spec)
    few = (subset[0][:14], subset[1][:14])
    assert evaluate(runner, data=few) == evaluate(trained, data=few, streamed=True)
