"""The spine on tiny models: contract, four targets, parity gate, bundle, atomic writes, errors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_models import TinyClip, TinyStream

import stexport
from stexport.errors import MissingExtraError, ParityError
from stexport.frames import preprocess
from stexport.models import Preprocess
from stexport.spec import GraphModule, build_spec
from stexport.targets import TARGETS, get_target


def _export(model: torch.nn.Module, target: str, out: Path, **kw: object) -> Path:
    torch.manual_seed(0)
    return stexport.export(model, target=target, out=out, steps=6, **kw)


def test_import_is_light() -> None:
    code = ("import sys, stexport; heavy = [m for m in ('torch', 'onnxruntime', 'litert_torch', 'coremltools', "
            "'executorch', 'ai_edge_litert') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_stream_spec_names_every_tensor() -> None:
    spec = build_spec(TinyStream(), form="stream")
    assert spec.input_names == ["frame", "buf", "pool", "count"]
    assert spec.output_names == ["logits", "buf_out", "pool_out", "count_out"]
    assert [s.init for s in spec.states] == ["zeros"] * 3
    assert spec.inputs[0].shape == (1, 3, 16, 16)
    clip = build_spec(TinyClip(), form="clip")
    assert clip.input_names == ["clip"] and clip.output_names == ["logits"]
    assert clip.inputs[0].shape == (1, 12, 16, 16) and clip.inputs[0].layout == "N(T*C)HW"


def test_ring_buffer_form_of_clip_model() -> None:
    m = TinyClip().eval()
    spec = build_spec(m, form="stream")
    assert spec.state_names == ["frames"] and spec.states[0].shape == (1, 12, 16, 16)
    clip = torch.randn(1, 3, 4, 16, 16)
    state = m.init_state()
    for t in range(4):
        logits, state = m.step(clip[:, :, t], state)
    assert torch.allclose(logits, m(clip), atol=1e-6)


def test_model_protocol_defaults() -> None:
    """Every model has ``refold``, ``with_step_layout`` and ``state_layouts``; a model that caches nothing and has
    no layout choice gets no-ops, and the spec falls back to NCHW-style layouts by rank."""
    m = TinyStream().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.refold()
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert m.with_step_layout("nhwc") is m and m.with_step_layout("nchw") is m
    with pytest.raises(ValueError, match="'nhwc' or 'nchw'"):
        m.with_step_layout("NHWC")
    assert m.state_layouts() == {}
    assert [s.layout for s in build_spec(m, form="stream").states] == ["NCHW", "NCHW", "NCHW"]
    assert TinyClip().with_step_layout("nhwc").state_layouts() == {}
    with pytest.raises(stexport.errors.StexportError, match="Linear is not a stexport model"):
        stexport.export(torch.nn.Linear(2, 2), target="onnx", progress=lambda s: None)


def test_bad_state_is_rejected() -> None:
    class Bad(TinyStream):
        def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
            return {"Buf.x": torch.zeros(batch_size, 2)}

    with pytest.raises(ValueError, match="lower-case identifier"):
        build_spec(Bad(), form="stream")


def test_graph_module_takes_names_and_positions() -> None:
    m = TinyStream().eval()
    spec = build_spec(m, form="stream")
    g = GraphModule(m, spec)
    feeds = spec.example_inputs()
    a = g(**feeds)
    b = g(*[feeds[n] for n in spec.input_names])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("target", ["onnx", "tflite", "executorch", "coreml"])
def test_tiny_stream_and_clip_export(tmp_path: Path, target: str) -> None:
    for model in (TinyStream().eval(), TinyClip().eval()):
        bundle = _export(model, target, tmp_path)
        name = type(model).__name__.lower()
        assert bundle == tmp_path / name / target
        art = bundle / f"{name}_fp32{TARGETS[target].suffix}"
        assert art.exists()
        manifest = json.loads((bundle / "manifest.json").read_text())
        parity = manifest["parity"]
        assert parity["passed"]
        if target == "coreml":
            assert parity["executed"] is False and parity["spec_checked"]
            # only what the package's manifest lists (no coremltools ExecuTorch debug-handle map)
            assert sorted(p.name for p in art.iterdir()) == ["Data", "Manifest.json"]
        else:
            assert parity["max_abs_err"]["logits"] < 1e-5 and parity["top1_agreement"] == 1.0
        if manifest["form"] == "stream":
            assert parity["pytorch_stream_vs_clip"]["passed"]
            assert [s["output"] for s in manifest["states"]] == [s["name"] + "_out" for s in manifest["states"]]
        assert (bundle / "labels.txt").read_text().splitlines()[0] == "class_0"
    assert not list(tmp_path.rglob(".*partial*"))


def test_a_killed_export_leaves_the_previous_bundle(tmp_path: Path) -> None:
    """An export killed (no cleanup) after moving the old bundle aside, or while staging: the next export to the
    same place puts the old bundle back and deletes the dead process's folders, before it fails or succeeds itself;
    a live process's folders are left alone."""
    from stexport.bundle import staged_bundle

    dead = subprocess.Popen(["true"])
    dead.wait()
    final = tmp_path / "m" / "onnx"
    final.parent.mkdir(parents=True)
    old = final.parent / f".onnx.old-{dead.pid}"
    old.mkdir()
    (old / "manifest.json").write_text("{}")
    (final.parent / f".onnx.partial-{dead.pid}-x").mkdir()
    alive = final.parent / f".onnx.partial-{os.getppid()}-y"
    alive.mkdir()
    for path in final.parent.rglob("*"):  # untouched for two hours (`stexport.bundle.IDLE_SECONDS`)
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    with pytest.raises(RuntimeError), staged_bundle(final):
        raise RuntimeError("this export fails too")
    assert (final / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in final.parent.iterdir()) == sorted(["onnx", alive.name])


def test_a_bundle_has_the_umask_permissions(tmp_path: Path) -> None:
    """A bundle's folders and files get the permissions of anything made here (0755 and 0644 under umask 022), not
    private ones: its staging folder came from ``tempfile.mkdtemp`` (0700) and the rename kept that, and
    coremltools writes ``model.mlmodel`` 0600 inside the .mlpackage."""
    from stexport.bundle import staged_bundle

    umask = os.umask(0)
    os.umask(umask)
    final = tmp_path / "m" / "coreml"
    with staged_bundle(final) as staging:
        (staging / "m.mlpackage" / "Data").mkdir(parents=True, mode=0o700)
        private = staging / "m.mlpackage" / "Data" / "model.mlmodel"
        private.write_text("")
        private.chmod(0o600)
    assert {oct(p.stat().st_mode & 0o777) for p in [final, *final.rglob("*")] if p.is_dir()} == {oct(0o777 & ~umask)}
    assert oct((final / "m.mlpackage" / "Data" / "model.mlmodel").stat().st_mode & 0o777) == oct(0o666 & ~umask)


class _Unchanged(TinyStream):
    """TinyStream with a state its step returns unchanged."""

    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        return {**super().init_state(batch_size), "fixed": torch.zeros(batch_size, 4)}

    def step(self, frame: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, new = super().step(frame, {k: v for k, v in state.items() if k != "fixed"})
        return logits, {**new, "fixed": state["fixed"]}


@pytest.mark.parametrize("target", ["tflite", "executorch", "coreml"])
def test_a_state_returned_unchanged_is_refused(tmp_path: Path, target: str) -> None:
    """A state output that is the state input itself: LiteRT's CompiledModel reads it from the output buffer,
    ExecuTorch returns zeros for it and coremltools cannot name it, so the export stops with an error naming it,
    and writes no bundle."""
    from stexport.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="fixed_out is input fixed"):
        _export(_Unchanged().eval(), target, tmp_path)
    assert not list((tmp_path / "_unchanged").iterdir())  # no bundle, no staging folder


@pytest.mark.parametrize("target", ["onnx", "tflite", "executorch"])
def test_stepper_keeps_state_in_the_runtime(tmp_path: Path, target: str) -> None:
    """`stexport.streaming.stepper`: the runtime's own state loop (LiteRT tensor buffers, ORT IOBinding, ExecuTorch's
    output tensors fed back as they are) gives exactly the logits and state of the stateless ``run`` with the state
    passed by hand."""
    from stexport.spec import IOSpec
    from stexport.streaming import stepper

    bundle = _export(TinyStream().eval(), target, tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    spec = IOSpec.from_json(manifest)
    runner = TARGETS[target].load().Runner(bundle / manifest["artifact"]["file"], spec)
    fast = stepper(runner)
    loops = {"onnx": "BindingStepper", "tflite": "BufferStepper", "executorch": "TensorStepper"}
    assert type(fast).__name__ == loops[target]
    state = spec.zero_state()
    g = torch.Generator().manual_seed(4)
    for _ in range(7):
        frame = torch.rand(spec.inputs[0].shape, generator=g).numpy()
        out = runner.run({"frame": frame, **state})
        state = {s.name: out[s.output] for s in spec.states}
        np.testing.assert_array_equal(fast.step({"frame": frame}), out["logits"])
    for k, v in fast.state().items():
        np.testing.assert_array_equal(v, state[k])


@pytest.mark.parametrize("target", ["onnx", "tflite", "executorch"])
def test_stepper_steps_a_clip_model(tmp_path: Path, target: str) -> None:
    """A clip-form bundle (no state) steps one clip at a time through the runtime's own loop, as the benchmark runs
    it: the logits of the stateless ``run``. (ExecuTorch's stepper failed on a program with no state outputs.)"""
    from stexport.spec import IOSpec
    from stexport.streaming import stepper

    bundle = _export(TinyClip().eval(), target, tmp_path, form="clip")
    manifest = json.loads((bundle / "manifest.json").read_text())
    spec = IOSpec.from_json(manifest)
    assert not spec.states
    runner = TARGETS[target].load().Runner(bundle / manifest["artifact"]["file"], spec)
    fast, name = stepper(runner), spec.input_names[0]
    g = torch.Generator().manual_seed(6)
    for _ in range(3):
        clip = torch.rand(spec.inputs[0].shape, generator=g).numpy()
        np.testing.assert_array_equal(fast.step({name: clip}), runner.run({name: clip})["logits"])
    assert fast.state() == {}


def test_executorch_stepper_runs_on_the_public_method_api(tmp_path: Path) -> None:
    """The ExecuTorch stepper calls the runtime's private binding (no output clones); a runtime without it gets
    the public ``Method.execute``, with the same logits and state."""
    from stexport.spec import IOSpec
    from stexport.streaming import stepper

    bundle = _export(TinyStream().eval(), "executorch", tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    spec = IOSpec.from_json(manifest)
    runner = TARGETS["executorch"].load().Runner(bundle / manifest["artifact"]["file"], spec)
    fast = stepper(runner)

    class Public:  # the method as the public API shows it
        def __init__(self, method: object) -> None:
            self.execute = method.execute  # type: ignore[attr-defined]

    runner.method = Public(runner.method)
    public = stepper(runner)
    g = torch.Generator().manual_seed(5)
    for _ in range(5):
        frame = torch.rand(spec.inputs[0].shape, generator=g).numpy()
        np.testing.assert_array_equal(public.step({"frame": frame}), fast.step({"frame": frame}))
    for k, v in fast.state().items():
        np.testing.assert_array_equal(public.state()[k], v)


class _OneDelegate(TinyStream):
    """TinyStream written with ops that ExecuTorch's XNNPACK delegate takes all of (its taps and its count's step as
    4D buffers): the program is one delegate call."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("taps", torch.tensor([0.2, -0.5, 1.0]).reshape(3, 1, 1, 1).repeat(1, 8, 1, 1))
        self.register_buffer("one", torch.ones(1, 1, 1, 1))

    def step(self, frame: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        y = torch.relu(self.conv(frame))
        buf = state["buf"]
        mixed = self.taps[0:1] * buf[:, :8] + self.taps[1:2] * buf[:, 8:] + self.taps[2:3] * y
        count = state["count"] + self.one
        pool = state["pool"] + (mixed.mean((2, 3), keepdim=True) - state["pool"]) / count
        return self.fc(pool.flatten(1)), {"buf": torch.cat([buf[:, 8:], y], 1), "pool": pool, "count": count}


class _WrittenFirst(_OneDelegate):
    """A state whose new value is computed before the step reads the old one."""

    def init_state(self, batch_size: int = 1) -> dict[str, torch.Tensor]:
        return {**super().init_state(batch_size), "last": torch.zeros(batch_size, 8)}

    def step(self, frame: torch.Tensor, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        last = torch.relu(self.conv(frame)).mean((2, 3))  # the state output, written first
        logits, new = super().step(frame, {k: v for k, v in state.items() if k != "last"})
        return logits + self.fc(state["last"] * 0.5), {**new, "last": last}


@pytest.mark.parametrize("model,in_place,precision", [(_OneDelegate, True, "fp32"), (_OneDelegate, True, "int8"),
                                                      (_WrittenFirst, False, "fp32"), (TinyStream, False, "fp32")])
def test_executorch_feeds_state_outputs_back_in_place_when_the_step_allows(tmp_path: Path, model: type,
                                                                           in_place: bool, precision: str) -> None:
    """An ExecuTorch program whose every state output is written after the last read of its input lets the stepper
    pass each step's state outputs (in the program's memory) back as the next inputs, with no copy; another stepper
    or `run` on the same program first takes that state out. A program that writes a state output before it has read
    the input keeps the copying loop, and so does a program with kernels outside its delegate (TinyStream's
    parameter selects), whose planned memory other tensors may share. All give exactly the stateless ``run``'s
    logits and state, in int8 too (its state crosses the boundary as float32, quantized inside)."""
    from stexport.spec import IOSpec
    from stexport.streaming import stepper

    kw = {"precision": "int8", "calibration_frames": 24} if precision == "int8" else {}
    bundle = _export(model().eval(), "executorch", tmp_path, **kw)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["converter"]["state_outputs_feed_back_in_place"] is in_place
    spec = IOSpec.from_json(manifest)
    runner = TARGETS["executorch"].load().Runner(bundle / manifest["artifact"]["file"], spec)
    assert runner.in_place is in_place
    a, b = stepper(runner), stepper(runner)
    assert a.in_place is b.in_place is in_place
    g = torch.Generator().manual_seed(6)
    frames = [torch.rand(spec.inputs[0].shape, generator=g).numpy() for _ in range(9)]
    got_a = [a.step({"frame": f}) for f in frames[:4]]  # consecutive steps: in place
    got_b = [b.step({"frame": f}) for f in frames[4:6]]  # b's first step takes a's state out
    got_a += [a.step({"frame": f}) for f in frames[6:9]]  # and a's takes b's out

    def chain(fs: list[np.ndarray]) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
        """The stateless run, the state carried by hand (its first call takes a's state out)."""
        state, logits = spec.zero_state(), []
        for f in fs:
            out = runner.run({"frame": f, **state})
            logits.append(out["logits"])
            state = {s.name: out[s.output] for s in spec.states}
        return logits, state

    want_a, state_a = chain(frames[:4] + frames[6:9])
    want_b, state_b = chain(frames[4:6])
    for got, want in ((got_a, want_a), (got_b, want_b)):
        for x, y in zip(got, want, strict=True):
            np.testing.assert_array_equal(x, y)
    for st, state in ((a, state_a), (b, state_b)):
        for k, v in st.state().items():
            np.testing.assert_array_equal(v, state[k])


def test_golden_replays_through_onnx(tmp_path: Path) -> None:
    """What an app does: decode golden frames, preprocess per manifest, carry state, compare logits."""
    from stexport.targets._onnx import Runner

    bundle = _export(TinyStream().eval(), "onnx", tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    golden = json.loads((bundle / "golden.json").read_text())
    p = manifest["preprocessing"]
    pre = Preprocess(size=tuple(p["size"]), value_range=tuple(p["value_range"]), mean=tuple(p["mean"]),
                     std=tuple(p["std"]))
    spec = build_spec(TinyStream(), form="stream")
    runner = Runner(bundle / manifest["artifact"]["file"], spec)
    state = {s["name"]: np.zeros(s["shape"], np.float32) for s in manifest["states"]}
    fmt = golden["frame_format"]
    for step in golden["steps"]:
        raw = np.frombuffer(base64.b64decode(step["frames_u8_b64"][0]), np.uint8)
        frame = preprocess(raw.reshape(1, fmt["height"], fmt["width"], 3), pre).numpy()
        assert abs(frame.sum() - step["input_summary"]["frame"]["sum"]) < 1e-2
        out = runner.run({"frame": frame, **state})
        assert np.max(np.abs(out["logits"][0] - np.asarray(step["logits"]))) < 1e-5
        state = {s["name"]: out[s["output"]] for s in manifest["states"]}


def test_failed_export_leaves_no_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stexport.targets import _onnx

    good = _export(TinyStream().eval(), "onnx", tmp_path)
    before = (good / "manifest.json").read_text()

    def boom(*a: object, **k: object) -> dict:
        (a[2]).write_bytes(b"half")  # type: ignore[union-attr]
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(_onnx, "convert", boom)
    with pytest.raises(RuntimeError, match="converter crashed"):
        _export(TinyStream().eval(), "onnx", tmp_path)
    assert (good / "manifest.json").read_text() == before  # the old bundle is untouched
    assert sorted(p.name for p in (tmp_path / "tinystream").iterdir()) == ["onnx"]


def test_failed_parity_leaves_no_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stexport.targets import _onnx

    class Wrong(_onnx.Runner):
        def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = super().run(feeds)
            out["logits"] = out["logits"] + 1e-3
            return out

    monkeypatch.setattr(_onnx, "Runner", Wrong)
    with pytest.raises(ParityError, match="parity gate failed"):
        _export(TinyStream().eval(), "onnx", tmp_path)
    assert not (tmp_path / "tinystream").exists() or not any((tmp_path / "tinystream").iterdir())


def test_no_verify_is_recorded(tmp_path: Path) -> None:
    bundle = _export(TinyClip().eval(), "onnx", tmp_path, verify=False)
    parity = json.loads((bundle / "manifest.json").read_text())["parity"]
    assert parity["skipped"] and "--no-verify" in parity["reason"]


def test_missing_extra_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from stexport.targets import Target

    monkeypatch.setattr(Target, "missing", lambda self: ["coremltools"])
    with pytest.raises(MissingExtraError, match=r"pip install 'stexport\[coreml\]'"):
        get_target("coreml").load()


def test_unknown_target_and_precision() -> None:
    with pytest.raises(KeyError, match="Did you mean: tflite"):
        get_target("tflit")
    with pytest.raises(stexport.errors.StexportError, match="not available for target"):
        stexport.export(TinyClip(), target="coreml", precision="int3")


@pytest.mark.parametrize("name", ["movinet_a0_stream", "tsm_mobilenetv2_online"])
def test_wrong_frame_is_refused(name: str) -> None:
    """A frame of the wrong layout or dtype gets an error naming the fix; a float64 model takes float64 frames."""
    model = stexport.create_model(name, input_size=32).eval()
    state = model.init_state(1)
    with pytest.raises(ValueError, match=r"expected a frame \[N, 3, H, W\]"):
        model.step(torch.zeros(1, 32, 32, 3), state)
    for dtype in (torch.uint8, torch.float64):
        with pytest.raises(TypeError, match=r"convert with frame.to\(torch.float32\)"):
            model.step(torch.zeros(1, 3, 32, 32, dtype=dtype), state)
    model.double()
    logits, _ = model.step(torch.zeros(1, 3, 32, 32, dtype=torch.float64),
                           {k: v.double() for k, v in model.init_state(1).items()})
    assert logits.dtype == torch.float64
