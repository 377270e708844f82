"""The integer boundary (``--io int8``): uint8 NHWC frames with the preprocessing in the graph, int8 buffer states
with their scale and zero point in the manifest (read back from the artifact) and zero-point init, float32
accumulators and logits; open_stream, verify and the parity gate on such bundles; the errors for unsupported uses.

A tiny stream model (seconds per export) by default; the trained MoViNet motion7 model is marked slow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_models import TinyBufferStream, TinyClip

import stexport
from stexport.boundary import UnsupportedIOError, dequantize
from stexport.errors import InputError
from stexport.frames import preprocess, synthetic_frames
from stexport.models import Preprocess
from stexport.parity import tolerance
from stexport.spec import IOSpec

pytestmark = pytest.mark.usefixtures("one_thread_per_module")
STEPS = 24  # frames compared between the two boundaries


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tiny model (same weights, same calibration frames) exported int8 with each boundary."""
    out = {}
    for io in ("float32", "int8"):
        torch.manual_seed(0)
        out[io] = stexport.export(TinyBufferStream().eval(), target="tflite", precision="int8", io=io,
                                  out=tmp_path_factory.mktemp(f"io_{io}"), steps=8, calibration_frames=24,
                                  progress=lambda s: None)
    return out


def test_unsupported_io_names_what_is_offered(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedIOError, match="offered with --target tflite --precision int8"):
        stexport.export(TinyBufferStream(), target="onnx", precision="int8", io="int8", out=tmp_path)
    with pytest.raises(UnsupportedIOError, match="not the clip form"):
        stexport.export(TinyClip(), target="tflite", precision="int8", io="int8", out=tmp_path)
    with pytest.raises(UnsupportedIOError, match="choose one of float32, int8"):
        stexport.export(TinyBufferStream(), target="tflite", precision="int8", io="uint16", out=tmp_path)
    for args, msg in ((["-m", "movinet_a0_stream_motion7", "-t", "tflite", "--io", "int8"],
                       "--io int8 is not available for --target tflite --precision fp32"),
                      (["-m", "tsm_mobilenetv2", "-t", "tflite", "-p", "int8", "--io", "int8"],
                       "not the clip form")):
        r = subprocess.run([sys.executable, "-m", "stexport.cli", *args, "--out", str(tmp_path)],
                           capture_output=True, text=True)
        assert r.returncode == 2 and msg in r.stderr, r.stderr
    assert not list(tmp_path.rglob("manifest.json"))


def test_integer_boundary_manifest_matches_the_artifact(bundles: dict[str, Path]) -> None:
    from stexport.targets._tflite import boundary_details

    bundle = bundles["int8"]
    m = _manifest(bundle)
    assert m["io"] == "int8" and m["parity"]["passed"], m["parity"]
    frame = m["inputs"][0]
    assert (frame["name"], frame["shape"], frame["dtype"], frame["layout"]) == ("frame", [1, 16, 16, 3], "uint8",
                                                                                "NHWC")
    assert m["preprocessing"]["folded_into_graph"] and m["preprocessing"]["tensor_layout"] == "NHWC uint8"
    states = {s["name"]: s for s in m["states"]}
    buf = states["buf"]
    assert buf["dtype"] == "int8" and buf["init"] == "zero_point"
    assert buf["init_value"] == buf["quantization"]["zero_point"] and buf["quantization"]["scale"] > 0
    for name in ("pool", "count"):  # accumulators: float32 from zero
        assert states[name]["dtype"] == "float32" and states[name]["init"] == "zeros"
        assert "quantization" not in states[name]
    assert next(t for t in m["outputs"] if t["name"] == "logits")["dtype"] == "float32"
    said = m["precision_details"]["integer_boundary"]  # the manifest says what stayed float and why
    assert said["accumulators"].endswith("pool, count") and said["buf"].startswith("int8 scale")
    # every dtype, scale and zero point is what the artifact says
    got = boundary_details(bundle / m["artifact"]["file"])
    for t in m["inputs"] + m["outputs"]:
        assert got[t["name"]][0] == t["dtype"], t
        if t["dtype"] != "float32":
            assert got[t["name"]][1] == t["quantization"], t
    assert got["buf"] == got["buf_out"] == ("int8", buf["quantization"])  # in == out: a lossless round trip
    assert got["frame"] == ("uint8", {"scale": 1.0, "zero_point": 0})
    spec = IOSpec.from_json(m)
    zero = spec.zero_state()
    assert zero["buf"].dtype == np.int8 and (zero["buf"] == buf["init_value"]).all()
    assert zero["pool"].dtype == np.float32 and not zero["pool"].any()


def test_integer_stream_equals_the_float_boundary_stream(bundles: dict[str, Path]) -> None:
    """open_stream on both bundles over the same frames: the int8 boundary (uint8 frames, int8 buffer) gives the
    float-boundary int8 model's logits within the int8 gate's tolerance, and its dequantized buffer state too."""
    frames = synthetic_frames(STEPS, 16, 16, seed=3)
    pre = Preprocess(size=(16, 16))
    s8, s32 = stexport.open_stream(bundles["int8"]), stexport.open_stream(bundles["float32"])
    q = next(s for s in _manifest(bundles["int8"])["states"] if s["name"] == "buf")["quantization"]
    assert (s8.state()["buf"] == q["zero_point"]).all()  # starts at its zero point
    got, ref = [], []
    for i in range(STEPS):
        got.append(s8.step({"frame": frames[i:i + 1].copy()}))
        ref.append(s32.step({"frame": preprocess(frames[i:i + 1], pre).numpy()}))
    got_l, ref_l = np.concatenate(got), np.concatenate(ref)
    tol = tolerance("int8", ref_l)["logits_max_abs"]  # the int8 gate's (0.058 here)
    err = float(np.max(np.abs(got_l - ref_l)))
    # measured 0.0: the same int8 graph, its boundary quantize/dequantize ops removed (frame range [0, 255] is
    # the range the synthetic calibration frames span, so the float-boundary model's input scale is 1/255 too)
    assert err <= min(tol, 1e-5), (err, tol)
    buf8, buf32 = s8.state()["buf"], s32.state()["buf"]
    assert buf8.dtype == np.int8
    # the float boundary's buffer is a DEQUANTIZE of the same int8 grid (measured difference 0.0)
    assert float(np.max(np.abs(dequantize(buf8, q) - buf32))) <= 1e-6
    with pytest.raises(InputError, match="raw RGB bytes"):
        s8.step({"frame": preprocess(frames[:1], pre).numpy()})
    with pytest.raises(InputError, match=r"has shape \[1, 3, 16, 16\]"):
        s8.step({"frame": np.zeros((1, 3, 16, 16), np.uint8)})
    s8.reset()
    assert (s8.state()["buf"] == q["zero_point"]).all()
    assert np.array_equal(s8.step({"frame": frames[:1].copy()}), got[0])  # the same first step after reset


def test_golden_replays_on_the_integer_boundary(bundles: dict[str, Path]) -> None:
    from stexport.bundle_verify import verify

    verdict = verify(bundles["int8"])
    assert verdict.executed and verdict.passed and len(verdict.steps) == 3, verdict
    golden = json.loads((bundles["int8"] / "golden.json").read_text())
    assert "uint8" in golden["frame_format"]["feed"]


@pytest.mark.slow
def test_movinet_motion7_integer_boundary(tmp_path: Path) -> None:
    """The trained A0 stream (28 states: 11 int8 buffers) with --io int8: the parity gate passes and the stream
    keeps the float-boundary int8 accuracy on 140 motion7 test clips (within 2 points)."""
    from stexport.motion7.train import eval_clips

    name = "movinet_a0_stream_motion7"
    bundle = stexport.export(name, target="tflite", precision="int8", io="int8", out=tmp_path,
                             progress=lambda s: None)
    m = _manifest(bundle)
    assert m["parity"]["passed"], m["parity"]
    kinds = {s["name"]: (s["kind"], s["dtype"]) for s in m["states"]}
    assert {d for k, d in kinds.values() if k == "buffer"} == {"int8"}
    assert {d for k, d in kinds.values() if k == "accumulator"} == {"float32"}
    data = eval_clips(clips=140)
    stream = stexport.open_stream(bundle)
    correct = 0
    for clip, label in zip(*data, strict=True):
        stream.reset()
        for f in clip:
            logits = stream.step({"frame": np.ascontiguousarray(f[None], np.uint8)})
        correct += int(np.argmax(logits) == label)
    assert correct / len(data[1]) >= 0.90
