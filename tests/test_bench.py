"""Smoke test of the benchmark (< 60 s): tiny models through `run_bench`, one real model through the CLI with onnx
for a few steps, every row validated against ``benchmarks/results.schema.json``. The full suite is a command
(``python -m stexport.benchmarks``), not a test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from toy_models import TinyClip, TinyStream

import stexport
from stexport.benchmarks import run_bench
from stexport.benchmarks.cli import main
from stexport.benchmarks.schema import SchemaError, load_schema, validate

pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

FAST = {"matmul_size": 256, "recompute_rounds": 2}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _by(rows: list[dict], kind: str, target: str) -> dict:
    return next(r for r in rows if r["kind"] == kind and r["target"] == target)


def test_schema_file_and_validator() -> None:
    schema = load_schema()
    assert schema["properties"]["kind"]["enum"] == ["runtime", "stream_vs_recompute"]
    try:
        import jsonschema
    except ImportError:
        pass
    else:
        jsonschema.Draft202012Validator.check_schema(schema)
    with pytest.raises(SchemaError):
        validate({"schema_version": 1, "kind": "runtime"})


def test_committed_rows_match_the_schema() -> None:
    """Every row under `benchmarks/results/` (each machine's folder) is one the schema describes: rows written by
    the ExecuTorch state loop (`TensorStepper`) were outside its ``state_loop`` values until 2026-12-07."""
    files = sorted((Path(__file__).parents[1] / "benchmarks" / "results").glob("**/*.jsonl"))
    rows = [r for f in files if f.parent.name != "precision" for r in _rows(f)]  # (precision/: rows of its own)
    assert len(rows) > 200
    for row in rows:
        validate(row)


def test_toy_stream_bench_writes_rows_table_and_plots(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rows = run_bench(TinyStream(), targets=["onnx"], frames=30, windows=(1, 2, 4), out_dir=tmp_path,
                     progress=False, **FAST)
    for r in rows:
        validate(r)
    assert [(r["kind"], r["target"]) for r in rows] == [("runtime", "pytorch"), ("runtime", "onnx"),
                                                        ("stream_vs_recompute", "pytorch")]
    assert all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    torch_row, onnx_row, curve_row = rows
    assert torch_row["machine"]["threads"] == 1 and torch_row["machine"]["matmul_peak"]["gflops_best"] > 0
    assert torch_row["machine"]["versions"]["torch"] and torch_row["machine"]["cpu_model"]
    assert isinstance(torch_row["machine"]["kernel_isa"], list)
    assert torch_row["model"]["parameters"] > 0 and torch_row["model"]["gflops_per_step"] > 0
    assert torch_row["model"]["step_unit"] == "frame"
    rt = onnx_row["runtime"]
    assert rt["latency"]["steps"] == 30 and rt["latency"]["unit"] == "ms per frame"
    assert 0 < rt["latency"]["median_ms"] <= rt["latency"]["p90_ms"]
    assert rt["export"]["artifact_bytes"] > 0 and rt["export"]["seconds"] >= 0
    assert rt["parity"]["passed"] and rt["parity"]["max_abs_err_logits"] < 1e-4
    assert rt["parity"]["bench_steps"] == 30 and rt["parity"]["bench_max_abs_err_logits"] < 1e-4
    assert rt["vs_pytorch"]["speedup_median"] > 0 and rt["vs_pytorch"]["rounds"] == 3
    assert rt["memory"]["runtime_peak_rss_bytes"] > 0 and torch_row["runtime"]["memory"]["runtime_peak_rss_bytes"] > 0
    assert rt["throughput"]["fraction_of_matmul_peak"] > 0
    ceiling = torch_row["machine"]["conv_ceiling"]  # XNNPACK's large 3x3 conv, same run: what % ceiling divides by
    assert ceiling["gflops_median"] > 0 and rt["throughput"]["conv_ceiling_gflops"] == ceiling["gflops_median"]
    assert rt["throughput"]["fraction_of_conv_ceiling"] > 0
    pc = rt["position_curve"]
    assert pc["window"] == 3 and len(pc["median_ms"]) == 10 and pc["late_frames"] == [27, 30]
    assert pc["late_over_early_interleaved"] > 0
    c = curve_row["curve"]
    assert c["windows"] == [1, 2, 4] and all(v and v > 0 for v in c["recompute_ms_per_frame"])
    assert set(c["video"]["stream_ms_per_frame"]) == set(c["video"]["late_over_early_interleaved"]) == {"pytorch",
                                                                                                     "onnx:fp32"}
    assert c["video"]["sliding_window"] == 4 and c["video"]["sliding_recompute_ms_per_frame"] > 0
    assert _rows(tmp_path / "tinystream.jsonl") == rows
    assert "| tinystream | frame | onnx | fp32 | 1 |" in (tmp_path / "table.md").read_text()
    section = (tmp_path / "README_section.md").read_text()
    assert section.startswith("## Benchmarks") and "plots/tinystream_stream_vs_recompute_t1.png" in section
    for png in ("tinystream_latency.png", "tinystream_stream_vs_recompute_t1.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:4] == b"\x89PNG"


def test_default_results_folder_is_under_the_current_directory(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A run without ``out_dir`` writes ``./benchmarks/results``, never the installed package's (or this checkout's)
    committed results: a quick one-target run from elsewhere replaced the committed rows of that model."""
    import stexport.benchmarks as pkg

    committed = Path(pkg.__file__).resolve().parent / "results"
    before = {p: p.stat().st_mtime_ns for p in committed.rglob("*")} if committed.exists() else {}
    monkeypatch.chdir(tmp_path)
    run_bench(TinyClip(), targets=[], clips=2, measure_memory=False, plots=False, progress=False, **FAST)
    assert (tmp_path / "benchmarks" / "results" / "tinyclip.jsonl").exists()
    assert (tmp_path / "benchmarks" / "results" / "table.md").exists()
    after = {p: p.stat().st_mtime_ns for p in committed.rglob("*")} if committed.exists() else {}
    assert after == before


def test_readme_section_links_plots_from_the_project_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The section is pasted into the top-level README, so a results folder under the current directory (the
    project root) is linked from there, a machine's own folder included; one elsewhere links beside itself."""
    from stexport.benchmarks.report import plots_prefix

    monkeypatch.chdir(tmp_path)
    assert plots_prefix(Path("benchmarks") / "results") == "benchmarks/results/plots/"
    assert plots_prefix(tmp_path / "benchmarks" / "results" / "amd_zen5") == "benchmarks/results/amd_zen5/plots/"
    assert plots_prefix(tmp_path.parent / "elsewhere") == "plots/"


def test_as_built_zero_gates_are_opened_for_timing() -> None:
    """As built, MoViNet's ReZero gates are 0 and LiteRT's converter folded ``x + 0 * branch`` away, so a base
    MoViNet row timed a graph without its residual branches: the bench opens them (0.5) and says so in the row."""
    from stexport.benchmarks.suite import WEIGHTS_NOTE, _resolve

    module, _, _ = _resolve("movinet_a0", None)
    alphas = [p.item() for n, p in module.named_parameters() if n.endswith("alpha")]
    assert len(alphas) == 15 and set(alphas) == {0.5}
    assert "0.5" in WEIGHTS_NOTE


def test_toy_clip_bench_is_per_clip(tmp_path: Path) -> None:
    rows = run_bench(TinyClip(), targets=["onnx", "executorch"], clips=5, measure_memory=False, plots=False,
                     out_dir=tmp_path, progress=False, **FAST)
    for r in rows:
        validate(r)
    assert [r["kind"] for r in rows] == ["runtime"] * 3  # no recompute curve for a clip model
    for target in ("onnx", "executorch"):  # (ExecuTorch's stepper failed on a program without state: no rows)
        row = _by(rows, "runtime", target)
        assert row["status"] == "ok", row["error"]
        assert row["model"]["step_unit"] == "clip" and row["model"]["form"] == "clip"
        lat = row["runtime"]["latency"]
        assert lat["unit"] == "ms per clip" and lat["steps"] == 5 and lat["warmup_steps"] == 2
        assert row["runtime"]["memory"] is None and row["runtime"]["parity"]["bench_max_abs_err_logits"] < 1e-4


def test_a_runtime_that_fails_its_warm_up_is_reported_and_the_others_run() -> None:
    import numpy as np

    from stexport.benchmarks.timing import Contender, interleaved

    class Works:
        def step(self, feeds: dict) -> np.ndarray:
            return feeds["x"][:1]

    class Fails:
        def step(self, feeds: dict) -> np.ndarray:
            raise RuntimeError("no such kernel")

    good, bad = Contender("pytorch", Works), Contender("broken", Fails)
    interleaved([good, bad], lambda i: {"x": np.full(2, float(i), np.float32)}, steps=4, warmup=2, chunk=2)
    assert bad.error == "RuntimeError: no such kernel" and not bad.times_ms
    assert good.error is None and len(good.times_ms) == 4


def _real_model() -> str:
    names = stexport.list_models()
    for preferred in ("movinet_a0_stream", "tsm_mobilenetv2_online"):
        if preferred in names:
            return preferred
    from stexport.models import get_entry

    return next((n for n in names if get_entry(n).streaming), names[0])


def test_real_model_onnx_through_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = _real_model()
    code = main(["--model", name, "--target", "onnx", "--frames", "3", "--warmup", "1", "--windows", "1,2",
                 "--recompute-rounds", "1", "--no-memory", "--no-plots", "--matmul-size", "256", "--quiet",
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"bench {name}: pytorch t1 ") and "onnx fp32 t1" in lines[0]
    assert lines[-1].startswith("bench: 1 model(s)") and "0 failed" in lines[-1]
    rows = _rows(tmp_path / f"{name}.jsonl")
    for r in rows:
        validate(r)
    onnx_row = _by(rows, "runtime", "onnx")
    assert onnx_row["runtime"]["parity"]["passed"] and onnx_row["runtime"]["export"]["artifact_bytes"] > 1e5
    assert onnx_row["runtime"]["parity"]["bench_max_abs_err_logits"] < 1e-3


def test_unknown_target_is_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", stexport.list_models()[0], "--target", "tflit"]) == 2
    assert "Did you mean: tflite" in capsys.readouterr().err


@pytest.mark.parametrize("cpuinfo, want", [
    ({"flags": "fpu sse2 avx2 fma avx512f avx512bw avx512_vnni amx_tile amx_int8"},
     ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "amx_int8"]),
    ({"Features": "fp asimd asimdhp asimddp i8mm bf16"}, ["asimd", "asimddp", "asimdhp", "i8mm", "bf16"]),
    ({}, []),
])
def test_machine_facts_name_the_kernel_isa(monkeypatch: pytest.MonkeyPatch, cpuinfo: dict, want: list) -> None:
    """int8 / fp32 ratios hang on the CPU's int8 paths (AMX, VNNI, Arm dot product): a row names them."""
    from stexport.benchmarks import machine

    monkeypatch.setattr(machine, "_cpuinfo", lambda: [cpuinfo])
    assert machine.kernel_isa() == want
