"""bLVNet-TAM (IBM/bLVNet-TAM) against the authors' reference fixture, plus its export-safety contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import clip_input, filled_state_dict, load_fixture, max_err, stream_logits, write_checkpoint

import stexport.models as M
from stexport.models import CheckpointMismatchError, ClipModel
from stexport.models._blvnet_layers import TAM, duplicate_pairs, split_pairs, upsample2x_by_concat, upsample_like

FIXTURE = "blvnet_tam/ssv2_r50_a2b4_f8x2_224.json"
NAME = "blvnet_tam_r50"
LABELS = Path(__file__).resolve().parents[1] / "export" / "labels" / "ssv2_174.txt"
SMALL = 64  # spatial size for the tests that run many clips (the structure is size-agnostic)


@pytest.fixture(scope="module")
def fix() -> dict:
    return load_fixture(FIXTURE)


@pytest.fixture(scope="module")
def plain_ckpt(fix: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The released layout: a plain state_dict ``baseline_model.<key>`` / ``new_fc.<key>``."""
    return write_checkpoint(tmp_path_factory.mktemp("blv") / "plain.pth.tar", filled_state_dict(fix))


@pytest.fixture(scope="module")
def small_model(plain_ckpt: Path) -> ClipModel:
    return M.create_model(NAME, checkpoint=plain_ckpt, input_size=SMALL)


def _hooked_run(model: torch.nn.Module, x: torch.Tensor, names: set[str]) -> tuple[torch.Tensor, dict]:
    """Run ``model(x)`` recording ``"<name> (in|out)"`` -> (shape, output mean/std) for the named submodules."""
    seen: dict[str, tuple[list[int], tuple[float, float]]] = {}

    def hook(name: str):
        def record(_m: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            t_in, t_out = inputs[0], output.detach().double()
            seen[f"{name} (in)"] = (list(t_in.shape), (0.0, 0.0))
            seen[f"{name} (out)"] = (list(output.shape), (float(t_out.mean()), float(t_out.std())))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n in names]
    try:
        with torch.no_grad():
            y = model(x)
    finally:
        for h in handles:
            h.remove()
    return y, seen


def test_plain_checkpoint_matches_reference(fix: dict, plain_ckpt: Path) -> None:
    model = M.create_model(NAME, checkpoint=plain_ckpt)
    assert sum(p.numel() for p in model.parameters()) == fix["num_params"] == 25_020_142
    assert list(model.state_dict()) == [k for k, _, _ in fix["state_dict"]]
    names = {k.rsplit(" ", 1)[0] for k in fix["stage_shapes"]}
    y, seen = _hooked_run(model, torch.from_numpy(clip_input(fix)), names)
    assert list(y.shape) == fix["outputs"]["logits_shape"]
    assert max_err(y.numpy(), fix["outputs"]["logits"]) <= 1e-5  # both batch items
    for key, shape in fix["stage_shapes"].items():
        assert key in seen, f"no module output for stage {key}"
        assert seen[key][0] == shape, f"{key}: {seen[key][0]} != {shape}"
    for key, (mean, std) in fix["stage_output_mean_std"].items():
        assert np.allclose(seen[key][1], (mean, std), atol=1e-4), f"{key}: {seen[key][1]} != {(mean, std)}"


def test_training_checkpoint_layout_loads(fix: dict, tmp_path: Path) -> None:
    sd = {"module." + k: v for k, v in filled_state_dict(fix).items()}
    ckpt = write_checkpoint(tmp_path / "train.pth.tar", {"state_dict": sd, "epoch": 50, "best_top1": 59.1})
    model = M.create_model(NAME, checkpoint=ckpt)
    with torch.no_grad():
        y = model(torch.from_numpy(clip_input(fix)))
    assert max_err(y.numpy(), fix["outputs"]["logits"]) <= 1e-5


def test_strict_loading_lists_keys(fix: dict, tmp_path: Path) -> None:
    sd = filled_state_dict(fix)
    sd.pop("new_fc.bias")
    sd.pop("baseline_model.layer4.2.tam.next.weight")
    sd["baseline_model.fc.weight"] = torch.zeros(174, 2048)
    sd["baseline_model.layer1.tam.prev.weight"] = torch.zeros(32, 1, 1, 1)
    with pytest.raises(CheckpointMismatchError) as err:
        M.create_model(NAME, checkpoint=write_checkpoint(tmp_path / "bad.pth", sd))
    msg = str(err.value)
    for key in ("new_fc.bias", "baseline_model.layer4.2.tam.next.weight", "baseline_model.fc.weight",
                "baseline_model.layer1.tam.prev.weight"):
        assert key in msg


def test_registry_entry_and_labels() -> None:
    entry = M.get_entry(NAME)
    assert (entry.num_classes, entry.num_frames, entry.input_size, entry.streaming) == (174, 16, 224, False)
    assert entry.origin == "IBM/bLVNet-TAM" and entry.dataset == "something-something-v2"
    assert "non-causal" in entry.description
    assert entry.preprocess.mean == (0.485, 0.456, 0.406) and entry.preprocess.std == (0.229, 0.224, 0.225)
    labels = LABELS.read_text().splitlines()
    assert len(labels) == 174 == len(set(labels))
    assert labels[0] == "Approaching something with your camera" and labels[-1] == "Wiping something off of something"
    assert labels[93] == "Pushing something from left to right"


def test_tam_matches_a_direct_shift() -> None:
    """TAM vs the paper's formula written on a 5D [N, T, C, H, W] view (test-only reference), for 3 and 5 frames."""
    torch.manual_seed(0)
    n, t, c = 2, 6, 4
    x = torch.randn(n * t, c, 3, 3)
    for blend in (3, 5):
        tam = TAM(c, t, blending_frames=blend)
        for p in tam.parameters():
            torch.nn.init.normal_(p)
        convs = [tam.prev, tam.curr, tam.next] if blend == 3 else list(tam.blending_layers)
        ref = torch.zeros(n, t, c, 3, 3)
        for i, conv in enumerate(convs):
            y = conv(x).view(n, t, c, 3, 3)
            s = i - blend // 2
            for f in range(t):
                if 0 <= f + s < t:
                    ref[:, f] += y[:, f + s]
        with torch.no_grad():
            assert torch.allclose(tam(x), F.relu(ref).view(n * t, c, 3, 3), atol=1e-6)


def test_pair_routing_matches_index_lists() -> None:
    n, t = 2, 8
    x = torch.randn(n * t, 3, 2, 2)
    little, big = split_pairs(x)
    big_list = [k + i * t for i in range(n) for k in range(1, t, 2)]
    little_list = [k + i * t for i in range(n) for k in range(0, t, 2)]
    assert torch.equal(big, x[big_list]) and torch.equal(little, x[little_list])
    ref = torch.zeros(n * t, 3, 2, 2)
    ref[0::2], ref[1::2] = big, big
    assert torch.equal(duplicate_pairs(big), ref)


def test_ring_buffer_step_matches_clip(small_model: ClipModel) -> None:
    torch.manual_seed(1)
    clip = torch.randn(1, 3, 16, SMALL, SMALL)
    steps = stream_logits(small_model, clip)  # [1, 16, K]
    with torch.no_grad():
        full = small_model(clip)
        padded = torch.cat([torch.zeros(1, 3, 10, SMALL, SMALL), clip[:, :, :6]], dim=2)
        early = small_model(padded)
    assert max_err(steps[:, -1].numpy(), full.numpy()) <= 1e-5
    assert max_err(steps[:, 5].numpy(), early.numpy()) <= 1e-5  # before 16 frames: zero-padded at the front
    state = small_model.init_state(1)
    assert list(state) == ["frames"] and list(state["frames"].shape) == [1, 48, SMALL, SMALL]


def test_trace_forward_packed(small_model: ClipModel) -> None:
    """torch.jit.trace on one input, then the traced graph vs eager on a different input (and batch size)."""
    torch.manual_seed(2)
    a = torch.randn(1, 48, SMALL, SMALL)
    b = torch.randn(2, 48, SMALL, SMALL) * 2 + 0.5

    class Packed(torch.nn.Module):
        def __init__(self, m: ClipModel) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m.forward_packed(x)

    with torch.no_grad():
        traced = torch.jit.trace(Packed(small_model), (a,), check_trace=False)
        assert max_err(traced(b).numpy(), small_model.forward_packed(b).numpy()) <= 1e-5


def test_export_max_rank(small_model: ClipModel) -> None:
    """torch.export of forward_packed: no tensor in the graph above rank 4 (the logits average is rank 3)."""
    from torch.export import export

    class Packed(torch.nn.Module):
        def __init__(self, m: ClipModel) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m.forward_packed(x)

    ep = export(Packed(small_model), (torch.randn(1, 48, SMALL, SMALL),))
    ranks = [len(v.shape) for node in ep.graph.nodes
             for v in ([node.meta.get("val")] if not isinstance(node.meta.get("val"), (list, tuple))
                       else node.meta["val"]) if isinstance(v, torch.Tensor)]
    assert ranks and max(ranks) <= 4, f"max tensor rank {max(ranks)}"
    print(f"max tensor rank in forward_packed: {max(ranks)}")


def test_upsample_by_concat_is_nearest() -> None:
    torch.manual_seed(3)
    big, little = torch.randn(2, 5, 3, 4), torch.randn(2, 7, 6, 8)
    assert torch.equal(upsample2x_by_concat(big), F.interpolate(big, size=(6, 8), mode="nearest"))
    assert torch.equal(upsample_like(big, little, by_concat=True), upsample2x_by_concat(big))
    odd = torch.randn(2, 7, 7, 8)  # not 2x: the general resize, as the authors'
    assert torch.equal(upsample_like(big, odd, by_concat=True), F.interpolate(big, size=(7, 8), mode="nearest"))


def test_nchw_export_form_runs_in_xnnpack_ops(small_model: ClipModel) -> None:
    """``with_step_layout("nchw")``: a copy whose shortcut pools are depthwise convs, whose 2x upsamples are
    concatenations and whose TAM shifts pad, the same logits to float rounding; ExecuTorch ran the authors' forms
    (and the TAM's zeros) as portable kernels outside its delegate (21 delegate calls, 2.6x LiteRT's time).
    ``"nhwc"``: the model as built."""
    from torch.export import export

    form = small_model.with_step_layout("nchw")
    assert form is not small_model and small_model.with_step_layout("nhwc") is small_model
    assert form.with_step_layout("nchw") is form and form.with_step_layout("nhwc") is not form
    integer = small_model.with_step_layout("nchw", integer=True)  # its zeros: a constant, not a float pad
    assert integer is not form and integer.with_step_layout("nchw", integer=True) is integer
    torch.manual_seed(4)
    x = torch.randn(1, 48, SMALL, SMALL)
    with torch.no_grad():
        want = small_model.forward_packed(x).numpy()
        assert max_err(form.forward_packed(x).numpy(), want) <= 1e-5
        assert max_err(integer.forward_packed(x).numpy(), want) <= 1e-5

    def ops(m: ClipModel) -> set[str]:
        class Packed(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.m = m

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.m.forward_packed(x)

        graph = export(Packed(), (x,)).run_decompositions().graph
        return {str(n.target) for n in graph.nodes if n.op == "call_function"}

    authors = {"aten.avg_pool2d.default", "aten.upsample_nearest2d.vec"}
    assert authors <= ops(small_model)
    assert not (authors | {"aten.full_like.default", "aten.full.default"}) & ops(form)
