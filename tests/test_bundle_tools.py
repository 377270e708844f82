"""Bundles in users' hands: ``stexport inspect``, ``verify``, ``predict``; the artifact's sha256; the stream
runtime's input checks; ``--set`` and checkpoint errors. Fast: ONNX exports of the shipped motion7 MoViNet and of
the toy models, reused across the module."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_models import TinyClip, TinyStream

import stexport
from stexport.cli import main
from stexport.errors import BundleError, InputError
from stexport.motion7 import data as motion

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

MOTION7 = "movinet_a0_stream_motion7"
#: held-out clips for predict: test split, indices nobody tuned on (the page test uses 0..6, conformance 700..706)
PREDICT_CLIPS = range(350, 357)


def _quiet(_msg: str) -> None:
    return None


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bundles")


@pytest.fixture(scope="module")
def motion_bundle(out: Path) -> Path:
    return stexport.export(MOTION7, target="onnx", out=out, progress=_quiet)


@pytest.fixture(scope="module")
def tiny_stream(out: Path) -> Path:
    torch.manual_seed(0)
    return stexport.export(TinyStream().eval(), target="onnx", out=out / "stream", steps=6, progress=_quiet)


@pytest.fixture(scope="module")
def tiny_clip(out: Path) -> Path:
    torch.manual_seed(0)
    return stexport.export(TinyClip().eval(), target="onnx", out=out / "clip", progress=_quiet)


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst)
    return dst


def write_video(path: Path, frames: np.ndarray, fps: int = 15) -> Path:
    """RGB uint8 [T, H, W, 3] -> an H.264 mp4 (imageio-ffmpeg), as a camera app would save it."""
    import imageio_ffmpeg

    h, w = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, quality=9, macro_block_size=1)
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    return path


# ---------------------------------------------------------------------------------------------------- integrity
def test_manifest_records_the_artifact_sha256(motion_bundle: Path) -> None:
    import hashlib

    m = json.loads((motion_bundle / "manifest.json").read_text())
    data = (motion_bundle / m["artifact"]["file"]).read_bytes()
    assert m["artifact"]["sha256"] == hashlib.sha256(data).hexdigest() and m["artifact"]["bytes"] == len(data)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_open_stream_refuses_a_modified_artifact(motion_bundle: Path, tmp_path: Path, damage: str) -> None:
    bad = _copy(motion_bundle, tmp_path / "bad")
    art = bad / json.loads((bad / "manifest.json").read_text())["artifact"]["file"]
    data = bytearray(art.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) * 3 // 4:]
    art.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=art.name) as e:
        stexport.open_stream(bad)
    assert "sha256" in str(e.value)


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="manifest.json does not exist"):
        stexport.open_stream(tmp_path)


# ---------------------------------------------------------------------------------------------------- inspect
def test_inspect_names_every_input_output_and_state(motion_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(motion_bundle)]) == 0
    text = capsys.readouterr().out
    m = json.loads((motion_bundle / "manifest.json").read_text())
    words = set(text.split())
    assert {t["name"] for t in m["inputs"]} | {t["name"] for t in m["outputs"]} <= words
    assert len(m["states"]) == 28 and all(s["name"] in words and s["output"] in words for s in m["states"])
    assert m["artifact"]["sha256"] in text and "matches the file" in text
    assert "[1, 3, 64, 64]" in text and m["states"][2]["layout"] in text and "zeros" in text
    assert "value range [0.0, 1.0]" in text
    assert "passed: logits max abs err" in text and "fp32" in text


def test_inspect_reports_a_modified_artifact(motion_bundle: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    bad = _copy(motion_bundle, tmp_path / "bad")
    art = next(bad.glob("*.onnx"))
    art.write_bytes(art.read_bytes()[:-10])
    assert main(["inspect", str(bad)]) == 1
    assert "DIFFERS" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- verify
def test_verify_passes_a_fresh_bundle(motion_bundle: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["verify", str(motion_bundle)]) == 0
    out = capsys.readouterr().out
    errs = [float(line.split("max abs err ")[1].split()[0]) for line in out.splitlines() if line.startswith("step")]
    assert len(errs) == 3 and max(errs) <= 1e-4, out  # the manifest's fp32 tolerance
    assert "verified: 3 golden step(s)" in out


def test_verify_names_the_step_and_output_that_differ(motion_bundle: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    bad = _copy(motion_bundle, tmp_path / "bad")
    golden = json.loads((bad / "golden.json").read_text())
    golden["steps"][1]["logits"][3] += 0.01  # 100x the fp32 tolerance, at step 1 only
    (bad / "golden.json").write_text(json.dumps(golden))
    assert main(["verify", str(bad)]) == 1
    cap = capsys.readouterr()
    assert "step 1, output 'logits' differs" in cap.err and "> tolerance 0.0001" in cap.err
    assert "step 0:" in cap.out and "DIFFERS" in cap.out.splitlines()[1]


def test_verify_refuses_a_modified_artifact(motion_bundle: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    bad = _copy(motion_bundle, tmp_path / "bad")
    art = next(bad.glob("*.onnx"))
    data = bytearray(art.read_bytes())
    data[100] ^= 1
    art.write_bytes(bytes(data))
    assert main(["verify", str(bad)]) == 1
    err = capsys.readouterr().err
    assert art.name in err and "sha256" in err and "Traceback" not in err


def test_verify_clip_form_bundle(tiny_clip: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["verify", str(tiny_clip)]) == 0
    assert "verified: 1 golden step(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_verify_coreml_checks_the_spec_and_says_it_did_not_run(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    bundle = stexport.export(TinyStream().eval(), target="coreml", out=tmp_path, steps=3, progress=_quiet)
    assert main(["verify", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "spec checked" in out and "not executed" in out


# ---------------------------------------------------------------------------------------------------- predict
def test_predict_names_the_motion_of_video_files(motion_bundle: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    named = []
    for i in PREDICT_CLIPS:
        frames, label = motion.motion_clip(i, split="test")
        video = write_video(tmp_path / f"clip{i}.mp4", frames)
        assert main(["predict", str(motion_bundle), str(video), "--json", "--top", "3"]) == 0
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        assert [r["frame"] for r in lines] == list(range(8))
        assert all(len(r["top"]) == 3 for r in lines)
        scores = [t["score"] for t in lines[-1]["top"]]
        assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
        named.append(lines[-1]["top"][0]["label"] == motion.CLASSES[label])
    assert sum(named) >= 6, named  # the model scores 99.4% on the test split; mp4 compression costs a little


def test_predict_every_n_frames_and_the_last(motion_bundle: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    frames = np.concatenate([motion.motion_clip(i, split="val")[0] for i in range(2)])  # 16 frames
    video = write_video(tmp_path / "v.mp4", frames)
    assert main(["predict", str(motion_bundle), str(video), "--every", "5", "--json", "--top", "1"]) == 0
    assert [json.loads(x)["frame"] for x in capsys.readouterr().out.splitlines()] == [4, 9, 14, 15]
    assert main(["predict", str(motion_bundle), str(video), "--every", "8", "--top", "2"]) == 0
    cap = capsys.readouterr()
    lines = cap.out.splitlines()
    assert [int(x.split()[1]) for x in lines] == [7, 15] and all(len(x.split()) == 2 + 2 * 2 for x in lines)
    assert "16/16 frames" in cap.err or "[16 frames]" in cap.err  # the progress bar


def test_predict_folder_of_images_matches_open_stream(motion_bundle: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """PNG frames are lossless: predict's scores equal a hand-run stream on the same frames."""
    import subprocess

    from stexport.calibration import ffmpeg_exe

    frames, _ = motion.motion_clip(3, split="val")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(frames):
        subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "64x64", "-i", "-",
                        str(folder / f"{i:03d}.png")], input=f.tobytes(), check=True)
    assert main(["predict", str(motion_bundle), str(folder), "--json", "--top", "7"]) == 0
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    stream = stexport.open_stream(motion_bundle)
    for i, f in enumerate(frames):
        logits = stream.step({"frame": np.ascontiguousarray((f.astype(np.float32) / 255).transpose(2, 0, 1)[None])})
        p = np.exp(logits[0] - logits[0].max())
        p /= p.sum()
        want = dict(zip(motion.CLASSES, p))
        assert max(abs(t["score"] - want[t["label"]]) for t in got[i]["top"]) <= 1e-5


def test_predict_clip_form_slides_a_window(tiny_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    frames = np.random.default_rng(0).integers(0, 256, (11, 16, 16, 3), dtype=np.uint8)
    video = write_video(tmp_path / "v.mp4", frames)
    assert main(["predict", str(tiny_clip), str(video), "--every", "3", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["frame"] for r in rows] == [3, 6, 9]  # windows of 4 frames ending at frames 3, 6, 9
    assert all(len(r["top"]) == 5 for r in rows)


@pytest.mark.parametrize("args,code,said", [
    (["--every", "0"], 2, "positive integer"),
    (["--top", "-1"], 2, "positive integer"),
    ([], 1, "no such video file"),
])
def test_predict_bad_usage(tiny_stream: Path, args: list[str], code: int, said: str,
                           capsys: pytest.CaptureFixture) -> None:
    video = "missing.mp4" if not args else str(tiny_stream / "golden.json")
    with pytest.raises(SystemExit) if code == 2 else _no_raise():
        assert main(["predict", str(tiny_stream), video, *args]) == code
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


class _no_raise:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return False


# ---------------------------------------------------------------------------------------------------- open_stream
@pytest.fixture
def stream(tiny_stream: Path) -> Iterator[object]:
    yield stexport.open_stream(tiny_stream)


def _frame(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 3, 16, 16)).astype(np.float32)


@pytest.mark.parametrize("feeds,said", [
    ({"frame": _frame()[..., :-1, :-1]}, "has shape [1, 3, 15, 15]"),
    ({"frame": (_frame() * 255).astype(np.uint8)}, "has dtype uint8"),
    ({"frame": _frame().astype(np.float64)}, "has dtype float64"),
    ({"image": _frame()}, "got inputs ['image']"),
    ({"frame": _frame(), "buf": np.zeros((1, 16, 16, 16), np.float32)}, "got inputs ['buf', 'frame']"),
    ({}, "got inputs []"),
    ({"frame": _frame().tolist()}, "is a list, not a numpy array"),
])
def test_open_stream_refuses_bad_feeds(stream, feeds: dict, said: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError) as e:
        stream.step(feeds)
    msg = str(e.value)
    assert said in msg and "'frame': float32 [1, 3, 16, 16]" in msg and "state is unchanged" in msg


def test_step_wants_a_dict(stream) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="takes a dict"):
        stream.step(_frame())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_frame_is_refused_and_the_state_kept(tiny_stream: Path, bad: float) -> None:
    a, b = stexport.open_stream(tiny_stream), stexport.open_stream(tiny_stream)
    a.step({"frame": _frame(0)})
    b.step({"frame": _frame(0)})
    before = a.state()
    poisoned = _frame(1)
    poisoned[0, 2, 5, 7] = bad
    with pytest.raises(InputError, match="NaN or infinite"):
        a.step({"frame": poisoned})
    for k, v in a.state().items():
        np.testing.assert_array_equal(v, before[k])
    la, lb = a.step({"frame": _frame(2)}), b.step({"frame": _frame(2)})
    np.testing.assert_array_equal(la, lb)
    assert np.isfinite(la).all()


def test_reset_returns_to_zero_state(tiny_stream: Path) -> None:
    s = stexport.open_stream(tiny_stream)
    first = s.step({"frame": _frame(0)})
    s.step({"frame": _frame(1)})
    assert any(np.abs(v).max() > 0 for v in s.state().values())
    s.reset()
    assert all(np.abs(v).max() == 0 for v in s.state().values())
    np.testing.assert_array_equal(s.step({"frame": _frame(0)}), first)


def test_clip_form_stream_checks_the_clip(tiny_clip: Path) -> None:
    s = stexport.open_stream(tiny_clip)
    x = np.random.default_rng(0).random((1, 12, 16, 16)).astype(np.float32)
    assert s.step({"clip": x}).shape == (1, 5)
    with pytest.raises(InputError, match="'clip': float32 \\[1, 12, 16, 16\\]"):
        s.step({"frame": x[:, :3]})


# ---------------------------------------------------------------------------------------------------- CLI errors
@pytest.mark.parametrize("value,said", [
    ("input_size=abc", "--set input_size=abc: option 'input_size' of squeezetime takes a positive integer"),
    ("input_size=-5", "--set input_size=-5: option 'input_size' of squeezetime takes a positive integer"),
    ("num_frames=0", "--set num_frames=0: option 'num_frames' of squeezetime takes a positive integer"),
    ("input_size=2.5", "takes a positive integer"),
    ("dropout=nan", "option 'dropout' of squeezetime takes a finite number"),
    ("spatial_stride=1,0", "takes positive integers separated by commas"),
    ("colour=red", "model 'squeezetime' has no option 'colour'; its options: num_classes, num_frames, input_size"),
    ("input_size", "expected KEY=VALUE"),
])
def test_bad_set_value_exits_2_with_one_line(value: str, said: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    assert main(["--model", "squeezetime", "--target", "onnx", "--set", value, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_good_set_values_parse() -> None:
    from stexport.options import parse_options

    assert parse_options("movinet_a0_stream", ["input_size=64", "pool_window=300", "num_frames=8"]) == {
        "input_size": 64, "pool_window": 300, "num_frames": 8}
    assert parse_options("movinet_a0_stream", ["pool_window=none"]) == {"pool_window": None}
    assert parse_options("squeezetime", ["spatial_stride=1,2,2,2", "dropout=0.2"]) == {
        "spatial_stride": (1, 2, 2, 2), "dropout": 0.2}
    assert parse_options("tsm_mobilenetv2_online_motion7", ["num_frames=4"]) == {"num_frames": 4}


@pytest.mark.parametrize("content", [b"\x00garbage" * 512, b"PK\x03\x04" + b"\x00" * 100])
def test_corrupt_checkpoint_exits_1_with_a_short_line(content: bytes, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    ckpt = tmp_path / "corrupt.pth"
    ckpt.write_bytes(content)
    assert main(["--model", MOTION7, "--target", "onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    first = next(line for line in err.splitlines() if line.startswith("stexport: error"))
    assert first == ("stexport: error: corrupt.pth is not a weights-only PyTorch checkpoint (a torch.save file of "
                     "tensors); pass the released file")
    assert "weights_only=False" not in err and "weights_only` set to `False`" not in err and "Traceback" not in err


def test_checkpoint_with_code_is_refused_without_unsafe_advice(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A pickle that needs a class to load (what torch advises weights_only=False for) is refused, no advice."""
    import collections

    ckpt = tmp_path / "pickled.pth"
    torch.save({"state_dict": collections.Counter(a=1), "cfg": argparse_namespace()}, ckpt)
    assert main(["--model", MOTION7, "--target", "onnx", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "is not a weights-only PyTorch checkpoint" in err and "weights_only" not in err.replace(
        "weights-only", "")


def argparse_namespace() -> object:
    import argparse

    return argparse.Namespace(lr=0.1)


def test_golden_frames_are_what_verify_replays(motion_bundle: Path) -> None:
    """golden.json frames decode to the manifest's size (what verify feeds the runtime)."""
    from stexport.bundle_verify import golden_feeds

    m = json.loads((motion_bundle / "manifest.json").read_text())
    g = json.loads((motion_bundle / "golden.json").read_text())
    feeds = golden_feeds(g, m)
    raw = np.frombuffer(base64.b64decode(g["steps"][0]["frames_u8_b64"][0]), np.uint8)
    assert len(feeds) == 3 and feeds[0]["frame"].shape == (1, 3, 64, 64) and raw.size == 64 * 64 * 3
    assert abs(float(feeds[0]["frame"].sum()) - g["steps"][0]["input_summary"]["frame"]["sum"]) <= 1e-6 * raw.size
