"""MoViNet A0-A5 (base, stream) and the A0 stream ensemble against the Atze00/MoViNet-pytorch reference fixtures.

Default run: the three fixtures (A0 base, A0 stream, A2 stream) through released-layout checkpoints, strict
loading, architecture (parameter counts, stage shapes) of every variant, streamed == clip for A1, the 4D-only
``step`` graph of A0, the ensemble, ``pool_window``, and a 500-frame boundedness run. ``-m slow``: the same for the
big variants and a 10,000-frame run.
"""

from __future__ import annotations

import re

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
)

import stexport.models as M
from stexport.models._movinet_config import SPECS, same_out

ATOL = 1e-5  # fixtures' tolerance_note: float64 vs float32 <= 1.7e-7; 1e-4 would miss real mistakes
VARIANTS = ["a0", "a1", "a2", "a3", "a4", "a5"]
BIG = ("a3", "a4", "a5")

# Parameter counts of the port's MoViNet(cfg, causal, conv_type="3d"|"2plus1d", tf_like=True, num_classes=600),
# measured by building the port (commit c2d1edf) in a scratch script; state_dict keys and shapes were identical.
PORT_PARAMS = {
    "movinet_a0": 3_111_799, "movinet_a0_stream": 3_748_031,
    "movinet_a1": 4_690_296, "movinet_a1_stream": 6_447_352,
    "movinet_a2": 5_249_562, "movinet_a2_stream": 7_326_962,
    "movinet_a3": 7_397_545, "movinet_a3_stream": 10_986_585,
    "movinet_a4": 11_349_463, "movinet_a4_stream": 18_136_135,
    "movinet_a5": 18_650_523, "movinet_a5_stream": 31_495_875,
}


def _slow_if_big(variants: list[str]) -> list[object]:
    return [pytest.param(v, marks=pytest.mark.slow) if v in BIG else v for v in variants]


def _checkpoint(tmp_path, fix: dict, name: str = "ck.pt"):
    path = tmp_path / name
    torch.save(filled_state_dict(fix), path)
    return path


def _run_with_probes(model: torch.nn.Module, clip: torch.Tensor, fix: dict) -> tuple[torch.Tensor, dict]:
    """Logits of the reference (port-shaped, 5D) path on ``clip`` and the outputs of the fixture's probed modules
    (same names as the port)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for probe in fix["outputs"]["probes"]:
        name = probe["name"]
        if name == "classifier:input":
            hooks.append(model.classifier.register_forward_pre_hook(
                lambda mod, args, name=name: seen.__setitem__(name, args[0])))
        else:
            hooks.append(model.get_submodule(name).register_forward_hook(
                lambda mod, args, out, name=name: seen.__setitem__(name, out)))
    try:
        with torch.no_grad():
            logits = model.classifier(model.features(clip)).flatten(1)
    finally:
        for h in hooks:
            h.remove()
    return logits, seen


def _check_probes(seen: dict, fix: dict) -> None:
    for probe in fix["outputs"]["probes"]:
        out = seen[probe["name"]]
        assert list(out.shape) == probe["shape"], probe["name"]
        assert max_err(probe_values(out, probe), probe["values"]) < ATOL, probe["name"]
    pooled = seen["classifier:input"].reshape(-1).numpy()
    assert max_err(pooled, fix["outputs"]["pooled_features"]) < ATOL


def _float64_depthwise_conv2d(conv2d):
    """``F.conv2d`` whose float64 depthwise case runs as unfold * weight summed over the window: the same
    arithmetic in float64, but one kernel instead of PyTorch's float64 fallback that loops over every group
    (thousands of calls per A0 step). Every other call goes to ``conv2d`` unchanged."""
    def wrapped(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        if x.dtype != torch.float64 or groups == 1 or groups != x.shape[1] or weight.shape[0] != groups:
            return conv2d(x, weight, bias, stride, padding, dilation, groups)
        pair = torch.nn.modules.utils._pair
        (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
        n, c, h, w = x.shape
        kh, kw = weight.shape[-2:]
        cols = torch.nn.functional.unfold(x, (kh, kw), (dh, dw), (ph, pw), (sh, sw)).reshape(n, c, kh * kw, -1)
        y = (cols * weight.reshape(1, c, kh * kw, 1)).sum(2)
        if bias is not None:
            y = y + bias.reshape(1, c, 1)
        return y.reshape(n, c, (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1)
    return wrapped


# -- registry ----------------------------------------------------------------------------------------------------------
def test_registry_entries():
    names = {n for n, e in M.entries().items() if e.origin == M.movinet.ORIGIN}  # type: ignore[attr-defined]
    expected = {f"movinet_{v}{s}" for v in VARIANTS for s in ("", "_stream")} | {"movinet_a0_stream_ensemble"}
    assert names == expected
    sizes = {"a0": 172, "a1": 172, "a2": 224, "a3": 256, "a4": 290, "a5": 320}
    frames = {"a0": 50, "a1": 50, "a2": 50, "a3": 120, "a4": 80, "a5": 120}
    fps = {"a0": 5, "a1": 5, "a2": 5, "a3": 12, "a4": 8, "a5": 12}
    for v in VARIANTS:
        for suffix, streaming in (("", False), ("_stream", True)):
            e = M.get_entry(f"movinet_{v}{suffix}")
            assert (e.input_size, e.num_frames, e.streaming, e.num_classes) == (sizes[v], frames[v], streaming, 600)
            assert e.labels == "kinetics600.txt" and e.origin.startswith("Atze00/MoViNet-pytorch")
            p = e.preprocess
            assert p.size == (sizes[v],) * 2 and p.value_range == (0.0, 1.0) and p.fps == fps[v]
            assert p.mean == (0.0, 0.0, 0.0) and p.std == (1.0, 1.0, 1.0)
    assert M.get_entry("movinet_a0_stream_ensemble").streaming


# -- fixtures (released checkpoint layout) -----------------------------------------------------------------------------
def test_a0_base_matches_fixture(tmp_path):
    fix = load_fixture("movinet/a0_base.json")
    model = M.create_model("movinet_a0", checkpoint=_checkpoint(tmp_path, fix))
    assert isinstance(model, M.ClipModel) and model.clip_layout == "NCTHW" and not model.streaming
    logits, seen = _run_with_probes(model, torch.from_numpy(clip_input(fix)), fix)
    assert max_err(logits.numpy(), fix["outputs"]["logits"]) < ATOL
    _check_probes(seen, fix)


@pytest.mark.parametrize("variant", ["a0", "a2"])
def test_stream_matches_fixture(tmp_path, variant):
    fix = load_fixture(f"movinet/{variant}_stream.json")
    model = M.create_model(f"movinet_{variant}_stream", checkpoint=_checkpoint(tmp_path, fix))
    assert isinstance(model, M.StreamModel)
    clip = torch.from_numpy(clip_input(fix))
    logits, seen = _run_with_probes(model, clip, fix)
    assert max_err(logits.numpy(), fix["outputs"]["logits"]) < ATOL
    _check_probes(seen, fix)
    with torch.no_grad():  # the clip form: step's channels-last layers on all frames at once
        assert max_err(model(clip).numpy(), fix["outputs"]["logits"]) < ATOL
    stepped = stream_logits(model, clip)
    assert max_err(stepped[0].numpy(), fix["outputs"]["per_frame_logits"]) < ATOL
    if variant == "a0":  # the per-frame logits of the causal clip path too
        with torch.no_grad():
            per_frame = model.clip_logits(clip)
        assert max_err(per_frame[0].numpy(), fix["outputs"]["per_frame_logits"]) < ATOL

    # our 4D state holds what the port's buffers hold: same blocks, channels and temporal extent
    state = model.init_state()
    h_of = {p["name"]: p["shape"][3] for p in fix["outputs"]["probes"]}
    expected = {"frame_count", "head_mean"}
    for s in fix["outputs"]["states"]:
        name, shape = s["name"], s["shape"]
        if name == "cgap.activation":
            assert tuple(state["head_mean"].shape) == (1, shape[1])
            continue
        block = name.split(".")[1]
        if ".deep.activation" in name:
            kt = s["kernel_size"][0]
            assert shape[2] == kt - 1 and shape[3] == h_of[f"blocks.{block}"]
            ours = state[f"{block}_deep_buf"]
            assert tuple(ours.shape) == (1, shape[2] * shape[3], shape[4], shape[1])  # channels-last
            expected.add(f"{block}_deep_buf")
        else:
            assert tuple(state[f"{block}_se_mean"].shape) == (1, shape[1])
            expected.add(f"{block}_se_mean")
    assert set(state) == expected


def test_strict_loading_names_the_missing_key(tmp_path):
    fix = load_fixture("movinet/a0_stream.json")
    sd = filled_state_dict(fix)
    del sd["classifier.3.conv_1.conv2d.weight"]
    path = tmp_path / "broken.pt"
    torch.save(sd, path)
    with pytest.raises(M.CheckpointMismatchError, match=r"classifier\.3\.conv_1\.conv2d\.weight"):
        M.create_model("movinet_a0_stream", checkpoint=path)
    # a base checkpoint is not a stream checkpoint
    with pytest.raises(M.CheckpointMismatchError, match="conv3d"):
        M.create_model("movinet_a0_stream", checkpoint=_checkpoint(tmp_path, load_fixture("movinet/a0_base.json")))


# -- architecture of every variant -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("stream", [False, True], ids=["base", "stream"])
def test_parameter_counts_and_stage_shapes(variant, stream):
    name = f"movinet_{variant}" + ("_stream" if stream else "")
    model = M.create_model(name, input_size=40)
    assert sum(p.numel() for p in model.parameters()) == PORT_PARAMS[name]
    spec = SPECS[variant]
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [b.register_forward_hook(lambda mod, args, out, n=n: shapes.__setitem__(n, tuple(out.shape)))
             for n, b in model.blocks.named_children()]
    with torch.no_grad():
        logits = model.classifier(model.features(torch.rand(1, 3, 2, 40, 40))).flatten(1)  # the 5D path
    for h in hooks:
        h.remove()
    assert logits.shape == (1, 600)
    size = same_out(40, 2)  # conv1, stride 2
    for i, stage in enumerate(spec.stages):
        size = same_out(size, stage[0].stride)
        for j, block in enumerate(stage):
            assert shapes[f"b{i}_l{j}"] == (1, block.cout, 2, size, size)
    assert [len(s) for s in spec.stages] == [sum(1 for k in shapes if k.startswith(f"b{i}_")) for i in range(5)]


@pytest.mark.parametrize("variant", _slow_if_big(["a1", "a3", "a4", "a5"]))
def test_stream_steps_equal_causal_clip(variant, one_thread):
    model = fill_model(M.create_model(f"movinet_{variant}_stream", input_size=64))
    clip = torch.rand(1, 3, 4, 64, 64, generator=torch.Generator().manual_seed(1))
    stepped = stream_logits(model, clip)
    with torch.no_grad():
        per_frame = model.clip_logits(clip)
        last = model(clip)
    assert (stepped - per_frame).abs().max() < 1e-4
    assert (stepped[:, -1] - last).abs().max() < 1e-4


@pytest.mark.parametrize("name,options", [("movinet_a0_stream", {}), ("movinet_a0_stream", {"pool_window": 3}),
                                          ("movinet_a0_stream_ensemble", {})])
def test_clip_form_equals_reference_path(name, options, one_thread):
    """Inference ``forward`` (step's 4D layers on all frames at once: the clip export) in both step layouts = the
    5D reference path, for a batch of 2 non-square clips, a saturating pool window and the ensemble's one-frame
    offset; with autograd on, ``forward`` is the reference path itself and trains the parameters."""
    model = fill_model(M.create_model(name, input_size=64, **options))
    clip = torch.rand(2, 3, 7, 64, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model.clip_logits(clip)[:, -1]
        for layout in ("nhwc", "nchw"):
            assert (model.with_step_layout(layout)(clip) - want).abs().max() < 1e-5, layout
            stepped = stream_logits(model.with_step_layout(layout), clip)[:, -1]
            assert (stepped - want).abs().max() < 1e-5, layout
    logits = model(clip)
    assert (logits.detach() - want).abs().max() < 1e-5
    logits.square().sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_multi_frame_running_mean_is_the_per_frame_recurrence():
    """`running_mean` over F frames at once (prefix means times ``(t + 1) / count``, the clip form's pools) equals
    the per-frame recurrence ``m += (s - m) / count`` for streams with their own earlier means and counts (float64)."""
    from stexport.models._movinet_layers import running_mean

    n, f, c = 3, 8, 5
    g = torch.Generator().manual_seed(0)
    s = torch.randn(n * f, c, generator=g, dtype=torch.float64)
    mean = torch.randn(n, c, generator=g, dtype=torch.float64)
    count = torch.tensor([[0.0], [3.0], [10.0]], dtype=torch.float64) + torch.arange(1, f + 1, dtype=torch.float64)
    r = (1.0 / count).reshape(-1, 1)
    got, last = running_mean(s, mean, r, frames=f)
    want, m = [], mean
    for t in range(f):
        m = m + (s.reshape(n, f, c)[:, t] - m) * r.reshape(n, f, 1)[:, t]
        want.append(m)
    assert (got - torch.stack(want, 1).reshape(-1, c)).abs().max() < 1e-12
    assert (last - m).abs().max() < 1e-12


# -- the step graph is 4D only -----------------------------------------------------------------------------------------
class _StepWrapper(torch.nn.Module):
    def __init__(self, model: M.StreamModel) -> None:
        super().__init__()
        self.model = model
        self.keys = list(model.init_state())

    def forward(self, frame: torch.Tensor, *states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, new = self.model.step(frame, dict(zip(self.keys, states, strict=True)))
        return (logits, *(new[k] for k in self.keys))


@pytest.mark.parametrize("name", ["movinet_a0_stream"] + [
    pytest.param(f"movinet_{v}_stream", marks=pytest.mark.slow) for v in VARIANTS[1:]
] + [pytest.param("movinet_a0_stream_ensemble", marks=pytest.mark.slow)])
def test_step_graph_is_4d(name):
    model = fill_model(M.create_model(name, input_size=64))
    wrapper = _StepWrapper(model)
    state = model.init_state()
    args = (torch.rand(1, 3, 64, 64), *state.values())
    program = torch.export.export(wrapper, args)
    ranks = {}
    for node in program.graph.nodes:
        vals = node.meta.get("val")
        for v in vals if isinstance(vals, (list, tuple)) else [vals]:
            if isinstance(v, torch.Tensor):
                ranks[node.name] = max(ranks.get(node.name, 0), v.dim())
    assert ranks and max(ranks.values()) <= 4, {k: r for k, r in ranks.items() if r > 4}
    assert not any(str(n.target).startswith("aten.conv3d") for n in program.graph.nodes)
    with torch.no_grad():
        eager, exported = wrapper(*args), program.module()(*args)
    assert max((a - b).abs().max().item() for a, b in zip(eager, exported, strict=True)) < 1e-5


# -- state contract ----------------------------------------------------------------------------------------------------
def test_state_contract_and_no_mutation(one_thread):
    model = fill_model(M.create_model("movinet_a0_stream", input_size=64))
    state = model.init_state(batch_size=2)
    assert list(state)[0] == "frame_count" and list(state)[-1] == "head_mean"
    for k, v in state.items():
        assert re.fullmatch(r"[a-z][a-z0-9_]*", k) and v.dtype == torch.float32 and v.dim() <= 4
        assert v.shape[0] == 2 and not v.any()
    frames = torch.rand(3, 2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, s1 = model.step(frames[0], state)
        assert all(not v.any() for v in state.values())  # the input state is untouched
        copies = {k: v.clone() for k, v in s1.items()}
        l2, _ = model.step(frames[1], s1)
        assert all(torch.equal(copies[k], s1[k]) for k in s1)
        l2b, _ = model.step(frames[1], model.step(frames[0], model.init_state(batch_size=2))[1])
    assert torch.equal(l2, l2b)
    assert list(s1) == list(state) and all(s1[k].shape == state[k].shape for k in state)
    assert s1["frame_count"].flatten().tolist() == [1.0, 1.0]


def test_folded_weights_follow_parameter_changes(monkeypatch, one_thread):
    monkeypatch.setattr(torch.nn.functional, "conv2d", _float64_depthwise_conv2d(torch.nn.functional.conv2d))
    model = fill_model(M.create_model("movinet_a0_stream", input_size=32))
    clip = torch.rand(1, 3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.blocks.b1_l0.alpha.mul_(3.0)  # in place: the eager step notices and refolds
        model.blocks.b2_l0.deep.conv_2.norm.running_var.mul_(2.0)
        expected = model.clip_logits(clip)
    assert (stream_logits(model, clip) - expected).abs().max() < 1e-5
    model.double()  # converts in place and refolds in float64
    assert model.init_state()["head_mean"].dtype == torch.float64
    with torch.no_grad():
        expected64 = model.clip_logits(clip.double())
    assert (stream_logits(model, clip.double()) - expected64).abs().max() < 1e-10


# -- pool_window -------------------------------------------------------------------------------------------------------
def test_pool_window_is_an_ema_after_window_frames(one_thread):
    plain = fill_model(M.create_model("movinet_a0_stream", input_size=32))
    windowed = fill_model(M.create_model("movinet_a0_stream", input_size=32, pool_window=3))
    assert plain.pool_window is None and windowed.pool_window == 3
    clip = torch.rand(1, 3, 7, 32, 32, generator=torch.Generator().manual_seed(4))
    a, b = stream_logits(plain, clip), stream_logits(windowed, clip)
    assert (a[:, :3] - b[:, :3]).abs().max() < 1e-6  # identical for the first `pool_window` frames
    assert (a[:, 3:] - b[:, 3:]).abs().max() > 1e-4  # then an exponential moving average
    with torch.no_grad():
        assert (windowed.clip_logits(clip) - b).abs().max() < 1e-5
        assert (windowed(clip) - b[:, -1]).abs().max() < 1e-5
    with pytest.raises(ValueError, match="pool_window"):
        M.create_model("movinet_a0_stream", pool_window=0)


# -- long videos stay bounded ------------------------------------------------------------------------------------------
def _long_run(monkeypatch, n_frames: int) -> None:
    """Float32 stepping of a small-resolution A0 stream vs the same model in float64, ``n_frames`` frames drawn
    from a fixed pool of 8: finite, bounded states, and logits that do not drift away from float64."""
    monkeypatch.setattr(torch.nn.functional, "conv2d", _float64_depthwise_conv2d(torch.nn.functional.conv2d))
    model = fill_model(M.create_model("movinet_a0_stream", input_size=32))
    ref = fill_model(M.create_model("movinet_a0_stream", input_size=32)).double()
    gen = torch.Generator().manual_seed(5)
    pool = torch.rand(8, 1, 3, 32, 32, generator=gen)
    order = torch.randint(0, 8, (n_frames,), generator=gen).tolist()
    state, state64 = model.init_state(), ref.init_state()
    checkpoint = max(1, n_frames // 10)
    peak_early = peak_late = 0.0
    with torch.no_grad():
        for t, i in enumerate(order):
            logits, state = model.step(pool[i], state)
            logits64, state64 = ref.step(pool[i].double(), state64)
            if t + 1 >= checkpoint:
                peak = max(v.abs().max().item() for k, v in state.items() if k != "frame_count")
                if t + 1 == checkpoint:
                    peak_early = peak
                peak_late = max(peak_late, peak)
    assert all(torch.isfinite(v).all() for v in state.values())
    assert state["frame_count"].item() == n_frames
    assert peak_late <= 1.05 * peak_early  # no state grows with the video length (the counter excepted)
    # float32 vs float64 measured at 500 / 10,000 frames: logits 1.9e-7 / 9.6e-7, running means 2.6e-7 / 1.1e-5
    # (the float32 running-mean rounding error grows slowly with the count; `pool_window` bounds it)
    assert (logits.double() - logits64).abs().max().item() < 1e-5
    assert max((state[k].double() - state64[k]).abs().max().item() for k in state if k.endswith("mean")) < 1e-4


def test_long_run_500_frames_bounded(monkeypatch, one_thread):
    _long_run(monkeypatch, 500)


@pytest.mark.slow
def test_long_run_10000_frames_bounded(monkeypatch, one_thread):
    _long_run(monkeypatch, 10_000)


# -- base models: ring-buffer step -------------------------------------------------------------------------------------
def test_base_ring_buffer_step_is_the_last_clip(one_thread):
    model = fill_model(M.create_model("movinet_a0", input_size=48, num_frames=3))
    state = model.init_state()
    assert list(state) == ["frames"] and tuple(state["frames"].shape) == (1, 9, 48, 48)
    clip = torch.rand(1, 3, 5, 48, 48, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        for t in range(5):
            logits, state = model.step(clip[:, :, t], state)
        expected = model(clip[:, :, 2:])
    assert (logits - expected).abs().max() < 1e-5


# -- the temporal ensemble ---------------------------------------------------------------------------------------------
def test_ensemble_clip_equals_steps_and_loads_checkpoint(tmp_path):
    fix = load_fixture("movinet/a0_stream.json")
    sd = filled_state_dict(fix)
    path = tmp_path / "ensemble.pt"
    torch.save(M.movinet.ensemble_checkpoint(sd, sd), path)  # type: ignore[attr-defined]
    model = M.create_model("movinet_a0_stream_ensemble", checkpoint=path)
    state = model.init_state()
    assert all(k.startswith(("a_", "b_")) for k in state) and "b_prev_logits" in state
    assert {k[2:] for k in state if k.startswith("a_")} == set(M.create_model("movinet_a0_stream").init_state())
    clip = torch.from_numpy(clip_input(fix))[:, :, :4]  # causal: the fixture's first 4 per-frame logits hold
    stepped = stream_logits(model, clip)[0].numpy()
    with torch.no_grad():
        assert max_err(model.clip_logits(clip)[0].numpy(), stepped) < ATOL
        assert max_err(model(clip)[0].numpy(), stepped[-1]) < ATOL
    # with a == b, frame t is the mean of the single model's logits at t and t - 1
    single = np.asarray(fix["outputs"]["per_frame_logits"])[:4]
    expected = np.concatenate([single[:1], 0.5 * (single[1:] + single[:-1])])
    assert max_err(stepped, expected) < ATOL
    # the members' state_dicts nested as {"a": ..., "b": ...} load the same
    torch.save({"a": sd, "b": sd}, tmp_path / "nested.pt")
    nested = M.create_model("movinet_a0_stream_ensemble", checkpoint=tmp_path / "nested.pt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in nested.state_dict().items())


def test_ensemble_members_differ(one_thread):
    model = M.create_model("movinet_a0_stream_ensemble", input_size=32)
    fill_model(model.a)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.b.parameters():
            p.normal_(0.0, 0.05)
    model.b.refold()
    clip = torch.rand(1, 3, 4, 32, 32, generator=torch.Generator().manual_seed(7))
    stepped = stream_logits(model, clip)
    with torch.no_grad():
        la, lb = model.a.clip_logits(clip), model.b.clip_logits(clip)
        assert (model.clip_logits(clip) - stepped).abs().max() < 1e-5
    assert (stepped[:, 0] - la[:, 0]).abs().max() < 1e-5
    assert (stepped[:, 1:] - 0.5 * (la[:, 1:] + lb[:, :-1])).abs().max() < 1e-5


def test_fresh_state_follows_the_frame_size(one_thread):
    """A zero state made by init_state() for the model's input size is re-made for the frames actually streamed;
    a carried (non-zero) state of another size raises instead of computing garbage."""
    model = fill_model(M.create_model("movinet_a0_stream", input_size=64))
    clip = torch.rand(1, 3, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    stepped = stream_logits(model, clip)
    with torch.no_grad():
        assert (stepped[0, -1] - model(clip)[0]).abs().max() < 1e-5
        _, state = model.step(clip[:, :, 0], model.init_state())
        with pytest.raises(ValueError, match="init_state"):
            model.step(torch.rand(1, 3, 64, 64), state)


@pytest.mark.parametrize("name", ["movinet_a0_stream", "movinet_a0_stream_ensemble"])
@pytest.mark.parametrize("integer", [False, True], ids=["fp32", "int8"])
def test_step_reads_every_state_before_writing_it(name, integer):
    """In the ExecuTorch forms of the step (NCHW; the integer one for int8 exports), each state input's last read
    comes before the op that writes its output, so ExecuTorch feeds the state outputs back in place (no copy per
    step). The integer step's head once read the old mean after writing the new one: its int8 program kept the copying
    loop (A0 int8 / fp32 in the benchmark 0.81 -> 0.75 once mended)."""
    from stexport.spec import GraphModule, build_spec
    from stexport.targets._executorch import states_read_before_written

    m = M.create_model(name, input_size=64).eval().with_step_layout("nchw", integer=integer)
    spec = build_spec(m, form="stream")
    ex = spec.example_inputs()
    with torch.no_grad():
        program = torch.export.export(GraphModule(m, spec).eval(), tuple(ex[n] for n in spec.input_names),
                                      strict=False)
    assert states_read_before_written(program, spec)
