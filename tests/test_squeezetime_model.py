"""SqueezeTime against the authors' reference fixture (xinghaochen/SqueezeTime @ 465900f, K400 16x224).

The fixture's parameters go through a released-layout mmengine checkpoint (``state_dict`` of ``backbone.net.*`` and
``cls_head.fc_cls.*`` keys next to ``meta``/``optimizer``/``message_hub``) and `stexport.create_model`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import clip_input, filled_state_dict, load_fixture, max_err, stream_logits, write_checkpoint

import stexport
from stexport.models import CheckpointMismatchError, get_entry
from stexport.models.squeezetime import SqueezeTime

FIXTURE = "squeezetime/k400_16x224.json"


@pytest.fixture(scope="module")
def fix() -> dict:
    return load_fixture(FIXTURE)


def mmengine_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict:
    """What mmengine's CheckpointHook writes (SqueezeTime_K400_71.64.pth)."""
    return {
        "meta": {"epoch": 100, "iter": 0, "mmengine_version": "0.8.4", "dataset_meta": {"num_classes": 400}},
        "state_dict": state_dict,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.00015, "momentum": 0.9, "weight_decay": 7e-5,
                                                     "params": [0, 1, 2]}]},
        "message_hub": {"log_scalars": {}, "runtime_info": {"epoch": 100, "iter": 0}, "resumed_keys": {}},
    }


@pytest.fixture(scope="module")
def checkpoint(fix: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("squeezetime") / "SqueezeTime_K400_71.64.pth"
    return write_checkpoint(path, mmengine_checkpoint(filled_state_dict(fix)))


@pytest.fixture(scope="module")
def model(checkpoint: Path) -> SqueezeTime:
    m = stexport.create_model("squeezetime", checkpoint=checkpoint)
    assert isinstance(m, SqueezeTime)
    return m


@pytest.fixture(scope="module")
def clip(fix: dict) -> torch.Tensor:
    return torch.from_numpy(clip_input(fix))


def reference_logits(fix: dict) -> np.ndarray:
    return np.asarray(fix["outputs"]["logits"], np.float64).reshape(fix["outputs"]["logits_shape"])


def test_registry_entry() -> None:
    e = get_entry("squeezetime")
    assert (e.num_classes, e.num_frames, e.input_size, e.streaming) == (400, 16, 224, False)
    assert e.labels == "kinetics400.txt" and e.origin == "xinghaochen/SqueezeTime"
    p = e.preprocess
    assert p.size == (224, 224) and p.value_range == (0.0, 255.0)
    assert p.mean == (123.675, 116.28, 103.53) and p.std == (58.395, 57.12, 57.375)
    labels = Path(stexport.__file__).parent / "labels" / e.labels
    assert len(labels.read_text().splitlines()) == 400


def test_reference_logits_and_stages(model: SqueezeTime, clip: torch.Tensor, fix: dict) -> None:
    """Both clips' logits within 1e-5 of the authors' model; every hooked stage has the recorded shape."""
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for label in fix["stage_shapes"]:
        name = label.removesuffix(" (out)")
        hooks.append(modules[name].register_forward_hook(
            lambda _m, _i, out, name=name: seen.__setitem__(name, out.detach())))
    try:
        with torch.no_grad():
            logits = model(clip)
    finally:
        for h in hooks:
            h.remove()
    want = reference_logits(fix)
    for i in range(want.shape[0]):
        assert max_err(logits[i].numpy(), want[i]) <= 1e-5, f"clip {i}"
    for label, shape in fix["stage_shapes"].items():
        assert list(seen[label.removesuffix(" (out)")].shape) == shape, label
    for label, (mean, std) in fix["stage_output_mean_std"].items():
        out = seen[label.removesuffix(" (out)")].double()
        assert abs(out.mean().item() - mean) <= 1e-4 and abs(out.std().item() - std) <= 1e-3 * std + 1e-5, label


def test_num_params(model: SqueezeTime, fix: dict) -> None:
    assert sum(p.numel() for p in model.parameters()) == fix["num_params"] == 29_706_688
    assert model.backbone.net.conv1.weight.shape[1] == 48


def test_module_keys_are_released_keys(model: SqueezeTime, fix: dict) -> None:
    assert list(model.state_dict()) == [k for k, _shape, _dt in fix["state_dict"]]


def test_missing_bn_statistics_raise(fix: dict, tmp_path: Path) -> None:
    """The authors' loader would skip absent BatchNorm statistics silently; ours names them."""
    sd = {k: v for k, v in filled_state_dict(fix).items()
          if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    path = write_checkpoint(tmp_path / "no_bn_stats.pth", mmengine_checkpoint(sd))
    with pytest.raises(CheckpointMismatchError) as err:
        stexport.create_model("squeezetime", checkpoint=path)
    msg = str(err.value)
    assert "missing keys" in msg and "backbone.net.bn1.running_mean" in msg
    assert "backbone.net.bn1.num_batches_tracked" in msg


def test_extra_and_misshaped_keys_raise(fix: dict, tmp_path: Path) -> None:
    sd = filled_state_dict(fix)
    sd["data_preprocessor.mean"] = torch.zeros(3, 1, 1, 1)
    sd["cls_head.fc_cls.bias"] = torch.zeros(600)
    path = write_checkpoint(tmp_path / "bad.pth", mmengine_checkpoint(sd))
    with pytest.raises(CheckpointMismatchError, match=r"(?s)unexpected keys: data_preprocessor\.mean.*"
                                                      r"cls_head\.fc_cls\.bias \[600\]"):
        stexport.create_model("squeezetime", checkpoint=path)


def test_ring_buffer_matches_clip(model: SqueezeTime, clip: torch.Tensor) -> None:
    """Stepping the T frames of a clip gives forward(clip); before T frames the window is zero-padded in front."""
    t = model.num_frames
    with torch.no_grad():
        steps = stream_logits(model, clip)
        full = model(clip)
        assert max_err(steps[:, -1].numpy(), full.numpy()) <= 1e-5
        k = 3
        padded = torch.cat([torch.zeros_like(clip[:, :, : t - k]), clip[:, :, :k]], dim=2)
        assert max_err(steps[:, k - 1].numpy(), model(padded).numpy()) <= 1e-5


def test_step_state_contract(model: SqueezeTime) -> None:
    state = model.init_state(batch_size=2)
    assert list(state) == ["frames"] and list(state["frames"].shape) == [2, 48, 224, 224]
    assert state["frames"].dtype == torch.float32 and not state["frames"].any()
    before = {k: v.clone() for k, v in state.items()}
    frame = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits, new = model.step(frame, state)
    assert list(logits.shape) == [2, 400]
    assert torch.equal(state["frames"], before["frames"]), "step mutated its input state"
    assert new["frames"].data_ptr() != state["frames"].data_ptr()
    # channel-major ring buffer: the newest frame sits at t = T-1 of every colour plane
    for c in range(3):
        assert torch.equal(new["frames"][:, c * 16 + 15], frame[:, c])


class _Packed(torch.nn.Module):
    def __init__(self, m: SqueezeTime) -> None:
        super().__init__()
        self.m = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m.forward_packed(x)


class _Step(torch.nn.Module):
    def __init__(self, m: SqueezeTime) -> None:
        super().__init__()
        self.m = m

    def forward(self, frame: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, state = self.m.step(frame, {"frames": frames})
        return logits, state["frames"]


def _max_rank(ep: torch.export.ExportedProgram) -> int:
    ranks = [n.meta["val"].dim() for n in ep.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)]
    assert ranks, "no tensor metadata in the exported graph"
    return max(ranks)


def test_graph_is_4d(model: SqueezeTime) -> None:
    """torch.export of forward_packed and step: static shapes, no tensor above rank 4 anywhere in the graph."""
    ep = torch.export.export(_Packed(model), (torch.zeros(1, 48, 224, 224),))
    assert _max_rank(ep) <= 4
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any("copy_" in o or "index_put" in o or "dropout" in o for o in ops), ops
    ep = torch.export.export(_Step(model), (torch.zeros(1, 3, 224, 224), torch.zeros(1, 48, 224, 224)))
    assert _max_rank(ep) <= 4


@pytest.mark.parametrize(("overrides", "clip_shape", "in_channels"), [
    ({"num_frames": 8}, (1, 3, 8, 224, 224), 24),
    ({"input_size": 160}, (1, 3, 16, 160, 160), 48),
    ({"depth": 18, "input_size": 112, "num_frames": 4}, (1, 3, 4, 112, 112), 12),
    ({"widen_factor": 0.5, "input_size": 96, "pos_dim": (7, 7, 7, 7)}, (2, 3, 16, 96, 96), 48),
])
def test_overrides_build_and_run(overrides: dict, clip_shape: tuple[int, ...], in_channels: int) -> None:
    m = stexport.create_model("squeezetime", **overrides)
    assert m.backbone.net.conv1.weight.shape[1] == in_channels == 3 * m.num_frames
    assert m.init_state()["frames"].shape[1] == in_channels
    with torch.no_grad():
        y = m(torch.randn(clip_shape))
    assert list(y.shape) == [clip_shape[0], 400] and torch.isfinite(y).all()


def test_pos_dim_follows_input_size() -> None:
    m = stexport.create_model("squeezetime", input_size=160)
    assert m.backbone.net.layer1[0].conv2.spatial_conv.pos_embed.shape[-1] == 40
    assert m.backbone.net.layer4[0].conv2.spatial_conv.pos_embed.shape[-1] == 5


@pytest.mark.parametrize(("depth", "blocks"), [(10, 4), (34, 16), (101, 33)])
def test_depths_build(depth: int, blocks: int) -> None:
    net = SqueezeTime(depth=depth).backbone.net
    assert sum(len(s) for s in (net.layer1, net.layer2, net.layer3, net.layer4)) == blocks


def test_unknown_depth_raises() -> None:
    with pytest.raises(ValueError, match="depth 42"):
        SqueezeTime(depth=42)
