"""TSM: offline TSN (MobileNetV2, ResNet-50) and online models against the authors' reference fixtures, the
shift semantics, the stream-state contract and export safety (a traced shift must not become a constant)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    clip_input,
    fill_model,
    filled_state_dict,
    load_fixture,
    max_err,
    probe_values,
    stream_logits,
    write_checkpoint,
)

import stexport
from stexport.models import CheckpointMismatchError, ClipModel, State, StreamModel, VideoModel, create_model, get_entry
from stexport.models._tsm_nets import TSN, OnlineTSM, OnlineTSN
from stexport.models._tsm_shift import shift_bidirectional, shift_stream, shift_unidirectional

OFFLINE = {"tsm_mobilenetv2": ("tsm/mobilenetv2_k400_8f.json", 1e-5),
           "tsm_resnet50": ("tsm/resnet50_k400_8f.json", 2e-5)}
ONLINE_FIX = "tsm/online_mobilenetv2_jester27.json"
pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.trace.*` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")]


@contextmanager
def capture(model: torch.nn.Module, names: list[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record module outputs (``name``) or inputs (``name:input``) of every call while inside the block."""
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    mods = dict(model.named_modules())
    hooks = []
    for n in names:
        mod_name, _, what = n.partition(":")
        if what == "input":
            hooks.append(mods[mod_name].register_forward_hook(lambda m, i, o, n=n: seen[n].append(i[0].detach())))
        else:
            hooks.append(mods[mod_name].register_forward_hook(lambda m, i, o, n=n: seen[n].append(o.detach())))
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def check_probe(t: torch.Tensor, probe: dict, atol: float, what: str) -> None:
    assert list(t.shape) == probe["shape"], f"{what}: shape {list(t.shape)} != {probe['shape']}"
    err = max_err(probe_values(t, probe), probe["values"])
    assert err <= atol, f"{what}: probe values off by {err:.3g}"
    assert abs(t.mean().item() - probe["mean"]) <= atol + 1e-5 * abs(probe["mean"]), f"{what}: mean"
    assert abs(t.std().item() - probe["std"]) <= atol + 1e-5 * abs(probe["std"]), f"{what}: std"


def filled(name: str, **overrides: object) -> VideoModel:
    """Registered model ``name`` with the fixtures' deterministic parameters."""
    model = create_model(name, **overrides)
    fill_model(model)
    return model


def release_checkpoint(path: Path, sd: dict[str, torch.Tensor], *, head: str = "new_fc") -> Path:
    """The released TSN layout: DataParallel keys under "state_dict", the head optionally as base_model.classifier."""
    ren = {} if head == "new_fc" else {"new_fc.weight": f"{head}.weight", "new_fc.bias": f"{head}.bias"}
    return write_checkpoint(path, {"state_dict": {"module." + ren.get(k, k): v for k, v in sd.items()},
                                   "epoch": 100, "arch": "TSM"})


# ---- the shift itself ----

def _authors_shift(x: torch.Tensor, t: int, fold_div: int) -> torch.Tensor:
    """ops/temporal_shift.py TemporalShift.shift (non in-place branch), the reference semantics."""
    nt, c, h, w = x.shape
    v = x.view(nt // t, t, c, h, w)
    fold = c // fold_div
    out = torch.zeros_like(v)
    out[:, :-1, :fold] = v[:, 1:, :fold]
    out[:, 1:, fold:2 * fold] = v[:, :-1, fold:2 * fold]
    out[:, :, 2 * fold:] = v[:, :, 2 * fold:]
    return out.view(nt, c, h, w)


def test_shift_ops_match_the_authors_semantics() -> None:
    x = torch.randn(2 * 5, 24, 3, 4)
    assert torch.equal(shift_bidirectional(x, n_segment=5, fold_div=8), _authors_shift(x, 5, 8))
    # online: channels [0, C/8) from the previous frame, zeros at frame 0; stepping == the clip shift
    uni = shift_unidirectional(x, n_segment=5, fold_div=8).view(2, 5, 24, 3, 4)
    v = x.view(2, 5, 24, 3, 4)
    buf = torch.zeros(2, 3, 3, 4)
    for t in range(5):
        y, buf = shift_stream(v[:, t], buf, fold_div=8)
        assert torch.equal(y, uni[:, t])
        assert torch.equal(buf, v[:, t, :3])
    assert torch.equal(uni[:, 0, :3], torch.zeros(2, 3, 3, 4)) and torch.equal(uni[:, 1:, :3], v[:, :-1, :3])


# ---- registry ----

def test_registered_variants() -> None:
    names = set(stexport.list_models("tsm_*"))
    assert {"tsm_mobilenetv2", "tsm_resnet50", "tsm_mobilenetv2_online", "tsm_resnet50_online"} <= names
    for name in ("tsm_mobilenetv2", "tsm_resnet50", "tsm_resnet50_online"):
        e = get_entry(name)
        assert (e.num_classes, e.labels, e.num_frames, e.input_size) == (400, "kinetics400.txt", 8, 224)
        assert e.preprocess.mean == (0.485, 0.456, 0.406) and e.preprocess.std == (0.229, 0.224, 0.225)
    e = get_entry("tsm_mobilenetv2_online")
    assert (e.num_classes, e.labels, e.streaming) == (27, "jester27.txt", True)
    assert not get_entry("tsm_resnet50").streaming and get_entry("tsm_resnet50_online").streaming


# ---- offline TSN from the released checkpoint layout ----

@pytest.mark.parametrize("name", sorted(OFFLINE))
def test_offline_release_checkpoint_matches_reference(name: str, tmp_path: Path) -> None:
    rel, tol = OFFLINE[name]
    fix = load_fixture(rel)
    ck = release_checkpoint(tmp_path / "TSM_kinetics_RGB_shift8_blockres_avg_segment8_e100_dense.pth",
                            filled_state_dict(fix))
    model = stexport.create_model(name, checkpoint=ck)
    assert isinstance(model, ClipModel) and model.clip_layout == "N(T*C)HW"
    assert sorted(model.state_dict()) == sorted(k for k, _, _ in fix["state_dict"])
    out = fix["outputs"]
    x = torch.from_numpy(clip_input(fix))
    probes = {p["name"]: p for p in out["probes"]}
    with torch.no_grad(), capture(model, [*probes]) as seen:
        seg = model.forward_segments(x)
    logits = seg.mean(1)
    assert max_err(seg, out["per_segment_logits"]) <= tol
    assert max_err(logits, out["logits"]) <= tol
    assert max_err(seen["new_fc:input"][0], out["pooled_features"]) <= tol
    for n, p in probes.items():
        check_probe(seen[n][0], p, tol, n)
    with torch.no_grad():  # the 5D contract and the packed entry point agree with the segments
        assert max_err(model(x), logits.numpy()) <= 1e-6
        packed = x.transpose(1, 2).reshape(1, -1, *x.shape[-2:])
        assert max_err(model.forward_packed(packed), logits.numpy()) <= 1e-6


def test_release_checkpoint_classifier_rename_and_strict_errors(tmp_path: Path) -> None:
    fix = load_fixture(OFFLINE["tsm_mobilenetv2"][0])
    sd = filled_state_dict(fix)
    ck = release_checkpoint(tmp_path / "classifier.pth", sd, head="base_model.classifier")
    model = stexport.create_model("tsm_mobilenetv2", checkpoint=ck)
    assert torch.equal(model.new_fc.weight, sd["new_fc.weight"]) and torch.equal(model.new_fc.bias, sd["new_fc.bias"])

    bad = dict(sd)
    del bad["base_model.features.3.conv.0.net.weight"]
    bad["base_model.features.3.conv.0.weight"] = sd["base_model.features.3.conv.0.net.weight"]  # unshifted layout
    with pytest.raises(CheckpointMismatchError) as err:
        stexport.create_model("tsm_mobilenetv2", checkpoint=release_checkpoint(tmp_path / "bad.pth", bad))
    msg = str(err.value)
    assert "missing keys: base_model.features.3.conv.0.net.weight" in msg
    assert "unexpected keys: base_model.features.3.conv.0.weight" in msg

    online = load_fixture(ONLINE_FIX)  # the online demo's plain layout is not a TSN checkpoint
    with pytest.raises(CheckpointMismatchError, match="missing keys"):
        stexport.create_model("tsm_mobilenetv2", checkpoint=write_checkpoint(tmp_path / "online.pth",
                                                                             filled_state_dict(online)))


# ---- online MobileNetV2 (the authors' demo) ----

class LastState:
    """A stepping proxy for `stream_logits` that keeps the state returned by the last step."""

    def __init__(self, model: StreamModel) -> None:
        self.model, self.init_state = model, model.init_state
        self.state: State = {}

    def step(self, frame: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        logits, self.state = self.model.step(frame, state)
        return logits, self.state


def test_online_mobilenetv2_matches_reference(tmp_path: Path) -> None:
    """The clip forward (the authors' modules) matches every recorded probe; ``step`` (folded weights) matches the
    per-frame logits, pooled features and final shift buffers in both step layouts."""
    fix = load_fixture(ONLINE_FIX)
    out = fix["outputs"]
    ck = write_checkpoint(tmp_path / "mobilenetv2_jester_online.pth.tar", filled_state_dict(fix))
    model = stexport.create_model("tsm_mobilenetv2_online", checkpoint=ck)
    assert isinstance(model, StreamModel)
    state0 = model.init_state()
    assert [(k, list(v.shape)) for k, v in state0.items()] == [(f"shift_{i}", s["shape"])
                                                               for i, s in enumerate(out["states"])]
    assert all(v.dtype == torch.float32 and not v.any() for v in state0.values())

    x = torch.from_numpy(clip_input(fix))
    probes = [p["name"] for p in out["probes_first_frame"]]
    with torch.no_grad(), capture(model, probes) as seen:  # the causal clip forward: frames are the batch
        per_frame = model.forward_frames(x)
        assert max_err(model(x)[0], out["logits"]) <= 1e-5
    assert max_err(per_frame[0], out["per_frame_logits"]) <= 1e-5
    assert max_err(seen["classifier:input"][0], out["per_frame_pooled_features"]) <= 1e-5
    for first, last in zip(out["probes_first_frame"], out["probes_last_frame"], strict=True):
        check_probe(seen[first["name"]][0][:1], first, 1e-5, f"frame 0 {first['name']}")
        check_probe(seen[last["name"]][0][-1:], last, 1e-5, f"frame 7 {last['name']}")

    for layout in ("nchw", "nhwc"):
        stepping = model.with_step_layout(layout)
        rec = LastState(stepping)
        with capture(stepping, ["classifier:input"]) as seen:
            stepped = stream_logits(rec, x)
        assert max_err(stepped[0], out["per_frame_logits"]) <= 1e-5, layout
        assert max_err(torch.cat(seen["classifier:input"]), out["per_frame_pooled_features"]) <= 1e-5, layout
        for i, p in enumerate(out["final_shift_buffers_probes"]):
            buf = rec.state[f"shift_{i}"]
            check_probe(buf.permute(0, 3, 1, 2) if layout == "nhwc" else buf, p, 1e-5, f"{layout} final shift_{i}")


def test_online_state_is_carried_and_not_mutated() -> None:
    model = filled("tsm_mobilenetv2_online", input_size=64)
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 3, 3, 64, 64)).astype(np.float32))
    carried = stream_logits(model, x)
    with torch.no_grad():
        cold = torch.stack([model.step(x[:, :, t].contiguous(), model.init_state())[0] for t in range(3)], 1)
        assert torch.equal(cold[:, 0], carried[:, 0])
        assert (carried[:, 1:] - cold[:, 1:]).abs().max() > 1e-3
        state = {k: torch.randn_like(v) for k, v in model.init_state().items()}
        before = {k: v.clone() for k, v in state.items()}
        frame = x[:, :, 0].contiguous()
        frame_before = frame.clone()
        _, new = model.step(frame, state)
        assert all(torch.equal(state[k], before[k]) for k in state) and torch.equal(frame, frame_before)
        assert new.keys() == state.keys()
        assert all(new[k].data_ptr() != state[k].data_ptr() for k in state)
        with pytest.raises(KeyError, match="shift_9"):
            model.step(frame, {k: v for k, v in state.items() if k != "shift_9"})


# ---- the stream step: folded weights in a step layout ----

def _nhwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    n, c, h, w = shape
    return (n, h, w, c)


def test_step_layouts_agree_with_each_other_and_the_clip() -> None:
    """NHWC and NCHW steps are the same computation (buffers with the channels last or second), both equal to the
    causal clip forward (the reference), from the same weights."""
    model = filled("tsm_mobilenetv2_online", input_size=64)
    assert isinstance(model, OnlineTSM)
    nhwc = model.with_step_layout("nhwc")
    assert model.with_step_layout("nchw") is model and nhwc is not model and nhwc.with_step_layout("nhwc") is nhwc
    with pytest.raises(ValueError, match="'nhwc' or 'nchw'"):
        model.with_step_layout("nwhc")
    assert set(model.state_layouts().values()) == {"NCHW"} and set(nhwc.state_layouts().values()) == {"NHWC"}
    assert list(nhwc.state_layouts()) == list(nhwc.init_state()) == list(model.init_state())
    assert {k: tuple(v.shape) for k, v in nhwc.init_state(2).items()} == \
        {k: _nhwc(tuple(v.shape)) for k, v in model.init_state(2).items()}
    assert not any("fused" in k for k in nhwc.state_dict()) and nhwc.state_dict().keys() == model.state_dict().keys()

    x = torch.from_numpy(np.random.default_rng(11).standard_normal((2, 3, 4, 64, 64)).astype(np.float32))
    a, b = LastState(model), LastState(nhwc)
    la, lb = stream_logits(a, x), stream_logits(b, x)
    with torch.no_grad():
        clip = model.forward_frames(x)
    assert max_err(la, clip.numpy()) <= 1e-5 and max_err(lb, clip.numpy()) <= 1e-5
    for k, v in a.state.items():
        assert max_err(b.state[k].permute(0, 3, 1, 2), v.numpy()) <= 1e-5, k


def test_tsn_layout_online_mobilenetv2_steps_like_its_clip() -> None:
    """The TSN-keyed network with MobileNetV2 (sites wrapping the expansion conv) steps folded as well."""
    model = fill_model(OnlineTSN(backbone="mobilenetv2", num_classes=5, input_size=64)).eval()
    assert isinstance(model, OnlineTSN) and len(model.init_state()) == 10
    x = torch.from_numpy(np.random.default_rng(13).standard_normal((1, 3, 3, 64, 64)).astype(np.float32))
    with torch.no_grad():
        clip = model.forward_frames(x)
    for layout in ("nchw", "nhwc"):
        assert max_err(stream_logits(model.with_step_layout(layout), x), clip.numpy()) <= 1e-5, layout


def test_folded_weights_follow_the_parameters(tmp_path: Path) -> None:
    """``step`` never runs on stale folded weights: after an in-place change, a load, ``.double()``, and in
    inference mode it equals the clip forward, which runs the parameters themselves."""
    model = filled("tsm_mobilenetv2_online", input_size=64, step_layout="nhwc")
    assert isinstance(model, OnlineTSM) and model.layout.name == "nhwc"
    x = torch.from_numpy(np.random.default_rng(17).standard_normal((1, 3, 3, 64, 64)).astype(np.float32))

    def gap(m: OnlineTSM, clip: torch.Tensor) -> float:
        with torch.no_grad():
            return max_err(stream_logits(m, clip), m.forward_frames(clip).numpy())

    before = stream_logits(model, x)
    with torch.no_grad():
        model.features[4].conv[1].running_var.mul_(3.0)  # in place: the eager step notices and refolds
        model.features[4].conv[0].weight.mul_(-1.0)
    assert gap(model, x) <= 1e-5 and (stream_logits(model, x) - before).abs().max() > 1e-3
    other = filled("tsm_mobilenetv2_online", input_size=64)
    model.load_state_dict(other.state_dict())  # a load refolds
    assert max_err(stream_logits(model, x), stream_logits(other, x).numpy()) <= 1e-5
    with torch.inference_mode():  # inference tensors have no version counter: refolds every step
        assert max_err(stream_logits(model, x), stream_logits(other, x).numpy()) <= 1e-5
    model.double()  # converts in place and refolds in float64
    assert model.features.fused_stem_0_w.dtype == torch.float64
    assert gap(model, x.double()) <= 1e-10


# ---- online ResNet-50: the same lifting mechanism on another backbone ----

def test_resnet50_online_stepping_equals_causal_clip(tmp_path: Path) -> None:
    model = filled("tsm_resnet50_online", input_size=64)
    assert isinstance(model, OnlineTSM)
    state0 = model.init_state(batch_size=2)
    assert len(state0) == 16 and list(state0) == [f"shift_{i}" for i in range(16)]
    assert list(state0["shift_0"].shape) == [2, 8, 16, 16] and list(state0["shift_3"].shape) == [2, 32, 16, 16]
    assert list(state0["shift_15"].shape) == [2, 256, 2, 2]
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((2, 3, 4, 64, 64)).astype(np.float32))
    with torch.no_grad():
        clip = model.forward_frames(x)
    for layout in ("nchw", "nhwc"):
        stepping = model.with_step_layout(layout)
        stepped = stream_logits(stepping, x)
        with torch.no_grad():
            cold = torch.stack([stepping.step(x[:, :, t].contiguous(), stepping.init_state(2))[0]
                                for t in range(4)], 1)
        assert max_err(stepped, clip.numpy()) <= 1e-5, layout
        assert (stepped[:, 1:] - cold[:, 1:]).abs().max() > 1e-3, layout  # the buffers matter

    # the offline tsm_resnet50 release checkpoint loads into it (same keys and layout)
    sd = filled_state_dict(load_fixture(OFFLINE["tsm_resnet50"][0]))
    online = stexport.create_model("tsm_resnet50_online", checkpoint=release_checkpoint(tmp_path / "r50.pth", sd))
    assert torch.equal(online.new_fc.weight, sd["new_fc.weight"])


# ---- export safety without converters: a traced shift must follow its input ----

def _inplace_ops(graph: torch._C.Graph) -> list[str]:
    return [n.kind() for n in graph.nodes() if n.kind().startswith("aten::") and n.kind().endswith("_")]


@pytest.mark.parametrize("name", ["tsm_mobilenetv2", "tsm_resnet50"])
def test_traced_offline_shift_follows_the_input(name: str) -> None:
    model = filled(name, input_size=64)
    assert isinstance(model, TSN)
    a, b = (torch.from_numpy(np.random.default_rng(s).standard_normal((1, 24, 64, 64)).astype(np.float32))
            for s in (0, 1))
    with torch.no_grad():
        traced = torch.jit.trace_module(model, {"forward_packed_segments": (a,), "forward_packed": (a,)},
                                        check_trace=False)
        graph = traced.forward_packed_segments.graph
        assert not _inplace_ops(graph), _inplace_ops(graph)
        want = model.forward_packed_segments(b)
        assert max_err(traced.forward_packed_segments(b), want.numpy()) <= 1e-5
        assert max_err(traced.forward_packed(b), want.mean(1).numpy()) <= 1e-5
        # per-segment outputs depend on the shift direction far above the tolerance (reversed time differs)
        assert (want - model.forward_packed_segments(b.reshape(1, 8, 3, 64, 64).flip(1).reshape(1, 24, 64, 64))
                .flip(1)).abs().max() > 1e-3


class FlatStep(torch.nn.Module):
    """``step`` with positional state, as the stream exporters trace it."""

    def __init__(self, model: StreamModel) -> None:
        super().__init__()
        self.model, self.names = model, list(model.init_state())

    def forward(self, frame: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new = self.model.step(frame, dict(zip(self.names, states, strict=True)))
        return (logits, *(new[k] for k in self.names))


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
@pytest.mark.parametrize("name", ["tsm_mobilenetv2_online", "tsm_resnet50_online"])
def test_traced_online_step_follows_input_and_state(name: str, layout: str) -> None:
    model = filled(name, input_size=64).with_step_layout(layout)
    assert isinstance(model, StreamModel)
    step = FlatStep(model)
    g = torch.Generator().manual_seed(0)
    frames = torch.randn(2, 1, 3, 64, 64, generator=g)
    states = [[torch.randn(v.shape, generator=g) for v in model.init_state().values()] for _ in range(2)]
    with torch.no_grad():
        traced = torch.jit.trace(step, (frames[0], *states[0]), check_trace=False)
        assert not _inplace_ops(traced.graph), _inplace_ops(traced.graph)
        got, want = traced(frames[1], *states[1]), step(frames[1], *states[1])
    for g_, w_ in zip(got, want, strict=True):
        assert max_err(g_, w_.numpy()) <= 1e-5


def test_offline_batch_and_ring_buffer_step() -> None:
    model = filled("tsm_mobilenetv2", input_size=64)
    assert isinstance(model, TSN)
    x = torch.from_numpy(np.random.default_rng(7).standard_normal((2, 3, 8, 64, 64)).astype(np.float32))
    with torch.no_grad():
        seg = model.forward_segments(x)
        assert seg.shape == (2, 8, 400)
        for i in range(2):  # segments of one video never mix with another's
            assert max_err(seg[i:i + 1], model.forward_segments(x[i:i + 1]).numpy()) <= 1e-5
    stepped = stream_logits(model, x[:1])  # ClipModel ring buffer: after T frames the window is the clip
    assert max_err(stepped[:, -1], seg[:1].mean(1).numpy()) <= 1e-5
