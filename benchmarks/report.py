"""Markdown table, plots and the README section, rebuilt from every ``<model>.jsonl`` in the results folder."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

COMMANDS = """\
```bash
pip install -e '.[all]'
python -m stexport.benchmarks                              # whole suite: every model x installed target, 1 thread
python -m stexport.benchmarks --threads 1,2 --frames 10000 # + 2 threads, 10,000-frame stream curve
stexport bench --model movinet_a0_stream --target onnx     # one model, one target (< 5 min)
```"""

METHOD = """\
How it is measured (`benchmarks/README.md` has the details and the JSON schema): each export is verified by the
parity gate (`max abs err` = gate vs PyTorch; `bench err` = max logits difference vs PyTorch over every timed
step). PyTorch eager and every exported runtime step the same synthetic video in interleaved rounds of 10 frames
(one clip per round for clip models) after a warm-up, each carrying its own state; latency is the median / p90 per
step, and `vs PyTorch` is the median of per-round ratios (> 1: faster than PyTorch). Peak RSS is measured per
runtime in a fresh subprocess (peak minus the idle interpreter). GFLOPs are counted with
`torch.utils.flop_counter.FlopCounterMode`; `% ceiling` compares achieved GFLOP/s with XNNPACK's fp32 throughput
on one large 3x3 conv (LiteRT) at the same thread count in the same run (rows measured before that ceiling existed
show `% matmul`, against a torch fp32 matmul, which understates the core ~2x). 1 thread unless stated, ONNX
Runtime without spinning. Models run with weights as built (speed does not depend on weight values), except
MoViNet's ReZero gates, 0 as built, which are set to 0.5: with a gate of 0 LiteRT's converter folds the residual
branch away and the row would time a graph without it. Every row names its machine and run: compare only rows of
the same run."""


def load_rows(out_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(out_dir.glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def _f(x: float | None, fmt: str = ".3g", scale: float = 1.0) -> str:
    return "–" if x is None else format(x * scale, fmt)


def _mb(x: int | None) -> str:
    return "–" if x is None else f"{x / 2**20:.3g}"


def _runtime_line(r: dict[str, Any]) -> list[str]:
    rt = r["runtime"] or {}
    m = r["model"]
    lat, ex, par, mem, vs, thr = (rt.get(k) for k in ("latency", "export", "parity", "memory", "vs_pytorch",
                                                       "throughput"))
    status = r["status"] if r["status"] == "ok" else f"{r['status']}: {(r['error'] or '')[:60]}"
    gate = par.get("max_abs_err_logits") if par else None
    bench = par.get("bench_max_abs_err_logits") if par else None
    return [
        m["name"], m["step_unit"], r["target"], r["precision"], str(r["threads"]),
        _f(ex["seconds"], ".1f") if ex else "–", _mb(ex["artifact_bytes"]) if ex else "–",
        _mb(mem["runtime_peak_rss_bytes"]) if mem else "–",
        _f(lat["median_ms"]) if lat else "–", _f(lat["p90_ms"]) if lat else "–",
        f"{vs['speedup_median']:.2f}x" if vs else ("1x" if r["target"] == "pytorch" and lat else "–"),
        ("ref" if r["target"] == "pytorch" else f"{_f(gate, '.1e')} / {_f(bench, '.1e')}") if par else "–",
        _f(m["gflops_per_step"]),
        _efficiency(thr),
        status,
    ]


def _efficiency(thr: dict[str, Any] | None) -> str:
    if not thr:
        return "–"
    if "fraction_of_conv_ceiling" in thr:
        return f"{thr['gflops_per_s']:.3g} ({thr['fraction_of_conv_ceiling']:.0%})"
    return f"{thr['gflops_per_s']:.3g} ({thr['fraction_of_matmul_peak']:.0%} matmul)"


def _table(header: list[str], lines: Iterable[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(c.replace("|", "/") for c in line) + " |" for line in lines]
    return "\n".join(out)


def _vs_fp32(r: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """This row's median over the fp32 row of the same run, model, target and threads (reduced precisions)."""
    lat = (r["runtime"] or {}).get("latency")
    if r["precision"] == "fp32" or not lat:
        return "–"
    base = next(((b["runtime"] or {}).get("latency") for b in rows if b["precision"] == "fp32" and
                 (b["run_id"], b["model"]["name"], b["target"], b["threads"]) ==
                 (r["run_id"], r["model"]["name"], r["target"], r["threads"])), None)
    return f"{lat['median_ms'] / base['median_ms']:.2f}" if base else "–"


def runtime_table(rows: list[dict[str, Any]]) -> str:
    rs = [r for r in rows if r["kind"] == "runtime"]
    rs.sort(key=lambda r: (r["model"]["name"], r["threads"], r["target"] != "pytorch", r["target"], r["precision"]))
    header = ["model", "step", "target", "prec", "thr", "export s", "artifact MB", "peak RSS MB", "median ms",
              "p90 ms", "vs PyTorch", "/ fp32", "max abs err (gate / bench)", "GFLOPs/step", "GFLOP/s (% ceiling)",
              "status"]
    return _table(header, ([*line[:11], _vs_fp32(r, rs), *line[11:]] for r in rs for line in [_runtime_line(r)]))


def recompute_table(rows: list[dict[str, Any]]) -> str:
    rs = sorted((r for r in rows if r["kind"] == "stream_vs_recompute"), key=lambda r: (r["model"]["name"],
                                                                                        r["threads"]))
    if not rs:
        return ""
    ts = sorted({t for r in rs for t in r["curve"]["windows"]})
    header = ["model", "thr", "stream ms/frame", *[f"recompute T={t}" for t in ts], "video frames",
              "stream late/early (interleaved)"]
    lines = []
    for r in rs:
        c = r["curve"]
        rec = dict(zip(c["windows"], c["recompute_ms_per_frame"]))
        ratio = dict(zip(c["windows"], c["recompute_over_stream"]))
        st = [s for s in c["stream_ms_per_frame"] if s is not None]
        flat = ", ".join(f"{k} {v:.3g}" for k, v in c["video"]["late_over_early_interleaved"].items() if v)
        lines.append([r["model"]["name"], str(r["threads"]), _f(sorted(st)[len(st) // 2] if st else None),
                      *[f"{_f(rec.get(t))} ({_f(ratio.get(t), '.2g')}x)" if rec.get(t) is not None else "–"
                        for t in ts],
                      str(c["video"]["frames"]), flat or "–"])
    return _table(header, lines)


def machine_lines(rows: list[dict[str, Any]]) -> str:
    seen: dict[tuple[Any, ...], str] = {}
    for r in rows:
        m = r["machine"]
        key = (r["run_id"], m["cpu_model"], m["threads"])
        if key in seen:
            continue
        v = m["versions"]
        mm = m["matmul_peak"]
        isa = f" [{' '.join(m['kernel_isa'])}]" if m.get("kernel_isa") else ""
        seen[key] = (f"- run `{r['run_id']}`: {m['cpu_model']}{isa}, {m['logical_cores']} logical cores "
                     f"({m['physical_cores']} physical), {m['threads']} thread(s), load avg {m['load_avg']}; "
                     f"fp32 matmul peak {mm['gflops_best']} GFLOP/s ({mm['size']}^2)"
                     + (f", conv ceiling {m['conv_ceiling']['gflops_median']} GFLOP/s (XNNPACK)"
                        if m.get("conv_ceiling") else "")
                     + f"; python {v.get('python')}, "
                     f"torch {v.get('torch')}, onnxruntime {v.get('onnxruntime')}, ai-edge-litert "
                     f"{v.get('ai-edge-litert')}, executorch {v.get('executorch')}, coremltools {v.get('coremltools')}")
    return "\n".join(seen.values())


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat record per runtime row (what the table shows), for tools that do not want the full rows."""
    out = []
    for r in rows:
        if r["kind"] != "runtime":
            continue
        rt = r["runtime"] or {}
        lat, par, vs = rt.get("latency") or {}, rt.get("parity") or {}, rt.get("vs_pytorch") or {}
        out.append({"model": r["model"]["name"], "step": r["model"]["step_unit"], "target": r["target"],
                    "precision": r["precision"], "threads": r["threads"], "status": r["status"],
                    "median_ms": lat.get("median_ms"), "p90_ms": lat.get("p90_ms"),
                    "speedup_vs_pytorch": vs.get("speedup_median"), "max_abs_err_logits": par.get("max_abs_err_logits"),
                    "gflops_per_step": r["model"]["gflops_per_step"], "run_id": r["run_id"]})
    return out


def plots_prefix(out_dir: Path) -> str:
    """How ``README_section.md`` links its plots: from the current directory (the project root, where the section is
    pasted into the README) when ``out_dir`` is under it, e.g. ``benchmarks/results/amd_zen5/plots/``; else
    ``plots/``, beside the section."""
    try:
        return f"{out_dir.resolve().relative_to(Path.cwd().resolve()).as_posix()}/plots/"
    except ValueError:
        return "plots/"


def write_reports(out_dir: Path, *, plots: bool = True) -> dict[str, Path]:
    """``table.md``, ``summary.json``, ``plots/*.png`` and ``README_section.md`` from every row in ``out_dir``."""
    rows = load_rows(out_dir)
    written: dict[str, Path] = {}
    images: list[tuple[str, str]] = []
    if plots:
        from stexport.benchmarks import plots as P

        for name in sorted({r["model"]["name"] for r in rows}):
            mine = [r for r in rows if r["model"]["name"] == name]
            p = out_dir / "plots" / f"{name}_latency.png"
            if P.latency_plot(mine, p):
                images.append((f"{name}: latency per runtime", p.name))
            for r in mine:
                if r["kind"] == "stream_vs_recompute":
                    p = out_dir / "plots" / f"{name}_stream_vs_recompute_t{r['threads']}.png"
                    if P.recompute_plot(r, p):
                        images.append((f"{name}: stream vs recompute ({r['threads']} thread(s))", p.name))
        p = out_dir / "plots" / "accuracy_vs_latency.png"
        if P.accuracy_plot(rows, p):
            images.append(("reported accuracy vs measured latency", p.name))
    tables = ["### Runtimes", "", runtime_table(rows)]
    rec = recompute_table(rows)
    if rec:
        tables += ["", "### Stream vs recompute (ms per new frame, PyTorch eager; ratio to stream in brackets)", "",
                   rec]
    machine = machine_lines(rows)
    table_md = "\n".join(["# Benchmark results", "", machine, "", *tables, ""])
    (out_dir / "table.md").write_text(table_md)
    written["table"] = out_dir / "table.md"
    (out_dir / "summary.json").write_text(json.dumps(summary(rows), indent=1) + "\n")
    written["summary"] = out_dir / "summary.json"
    prefix = plots_prefix(out_dir)
    section = ["## Benchmarks", "", METHOD, "", "Machine:", "", machine, "", *tables, ""]
    for title, file in images:
        section += [f"![{title}]({prefix}{file})", ""]
    section += ["Reproduce (from the project root: writes `benchmarks/results/` under the current directory):", "",
                COMMANDS, ""]
    (out_dir / "README_section.md").write_text("\n".join(section))
    written["readme_section"] = out_dir / "README_section.md"
    return written
