"""The per-frame budget tool's perf parsing (the measurement itself needs perf and a quiet machine), and the
ExecuTorch and ONNX Runtime operator profiles (`stexport.benchmarks.et_ops`, `stexport.benchmarks.ort_ops`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from stexport.benchmarks.budget import kernel_group_shares

REPORT = """\
# Samples: 4K of event 'cpu-clock'
#
    24.89%  [.] xnn_f32_gemm_minmax_ukernel_7x32__avx512f_broadcast                    -      -
    18.99%  [.] xnn_f32_gemm_minmax_ukernel_1x32__avx512f_broadcast                    -      -
    12.71%  [.] __memmove_avx512_unaligned_erms                                        -      -
     6.93%  [.] xnn_f32_dwconv_minmax_ukernel_25p16c__avx512f                          -      -
     3.77%  [.] xnn_f32_vhswish_ukernel__avx512f_u32                                   -      -
     0.36%  [k] finish_task_switch.isra.0                                              -      -
"""


def test_perf_report_is_grouped_by_kernel_family() -> None:
    shares = kernel_group_shares(REPORT)
    assert shares["1x1 convs (GEMM)"] == pytest.approx(0.2489)
    assert shares["fully connected (M=1 GEMM: SE and classifier)"] == pytest.approx(0.1899)
    assert shares["copies (concatenations, slices, state I/O)"] == pytest.approx(0.1271)
    assert shares["depthwise convs (spatial and temporal)"] == pytest.approx(0.0693)
    assert shares["hard-swish"] == pytest.approx(0.0377)
    assert shares["other (Python, numpy, kernel)"] == pytest.approx(0.0036)
    assert list(shares)[0] == "1x1 convs (GEMM)"  # largest first


def test_executorch_op_profile_groups_operators_by_type() -> None:
    from stexport.benchmarks.et_ops import group_ops

    events = [("Method::execute", 3.0), ("DELEGATE_CALL", 2.9), ("Transpose (ND, X8) #1", 0.5),
              ("Multiply (ND) #1", 0.2), ("Transpose (ND, X8) #2", 0.25), ("Multiply (ND) #12", 0.1)]
    ops = group_ops(events)
    assert list(ops) == ["Transpose (ND, X8)", "Multiply (ND)"]  # largest first, ExecuTorch's totals left out
    assert ops["Transpose (ND, X8)"] == {"ms": pytest.approx(0.75), "count": 2}
    assert ops["Multiply (ND)"] == {"ms": pytest.approx(0.3), "count": 2}


def tiny_stream_bundle(target: str, out: Path) -> Path:
    """`toy_models.TinyStream` (seed 0) exported to ``target`` under ``out``."""
    import torch
    from toy_models import TinyStream

    import stexport

    torch.manual_seed(0)
    return stexport.export(TinyStream().eval(), target=target, out=out, steps=4, progress=lambda s: None)


@pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="needs the executorch extra")
def test_executorch_op_profile_of_an_exported_stream(tmp_path: Path) -> None:
    """The profile of a real (tiny) program: its XNNPACK operators, each timed, inside the delegate call."""
    from stexport.benchmarks.et_ops import profile

    res = profile(tiny_stream_bundle("executorch", tmp_path), steps=3)
    ops = res["op_types"]
    assert any(k.startswith("Convolution") for k in ops), ops
    assert all(g["count"] >= 1 and g["ms"] >= 0 for g in ops.values())
    assert sum(g["ms"] for g in ops.values()) <= res["delegate_calls_ms"] <= res["execute_ms"]


def test_onnx_runtime_op_profile_sums_kernels_per_step_by_type() -> None:
    from stexport.benchmarks.ort_ops import group_kernels

    def kernel(op: str, us: float) -> dict:
        return {"cat": "Node", "name": f"{op}_token_kernel_time", "dur": us, "args": {"op_name": op}}

    events = [{"cat": "Session", "name": "model_run", "dur": 900.0},
              {"cat": "Node", "name": "conv_fence_before", "dur": 1.0, "args": {"op_name": "QLinearConv"}},
              kernel("QLinearConv", 300.0), kernel("QLinearMul", 50.0), kernel("QLinearConv", 500.0),
              kernel("QLinearMul", 70.0)]
    ops = group_kernels(events, steps=2)  # two steps, one conv and one multiply each
    assert list(ops) == ["QLinearConv", "QLinearMul"]  # largest first; fences and session events left out
    assert ops["QLinearConv"] == {"ms": pytest.approx(0.4), "count": pytest.approx(1)}
    assert ops["QLinearMul"] == {"ms": pytest.approx(0.06), "count": pytest.approx(1)}


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs the onnx extra")
def test_onnx_runtime_op_profile_of_an_exported_stream(tmp_path: Path) -> None:
    """The profile of a real (tiny) stream model in the app's loop: every kernel of a step, each timed."""
    from stexport.benchmarks.ort_ops import main, profile

    bundle = tiny_stream_bundle("onnx", tmp_path)
    res = profile(bundle, steps=3)
    ops = res["op_types"]
    assert "Conv" in ops, ops
    assert all(g["count"] >= 1 and g["ms"] >= 0 for g in ops.values())
    assert sum(g["ms"] for g in ops.values()) <= res["run_ms"]
    assert main([str(bundle), "--steps", "2", "--out", str(tmp_path / "ops")]) == 0
    assert (tmp_path / "ops" / f"{res['model']}_fp32_onnx_ops.json").is_file()
