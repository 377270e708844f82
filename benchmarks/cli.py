"""``stexport bench`` and ``python -m stexport.benchmarks``.

Exit codes: 0 every row ok (or not executable on this OS); 1 some export or runtime failed (its row says why);
2 bad usage (unknown model or target).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _ints(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _names(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [n for v in values for n in v.split(",") if n]


def parser(prog: str = "stexport bench") -> argparse.ArgumentParser:
    from stexport.benchmarks.recompute import DEFAULT_WINDOWS
    from stexport.benchmarks.suite import DEFAULT_CLIPS, DEFAULT_FRAMES, RESULTS_DIR

    p = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark exported models against PyTorch eager, side by side in one run: export time, "
                    "artifact size, peak RSS, latency (median/p90), parity, FLOPs, stream vs recompute.",
        epilog="Without --model: the whole suite (every registered model). Example: "
               "stexport bench --model movinet_a0_stream --target onnx")
    p.add_argument("--model", "-m", action="append", help="registered model or shell glob (repeat or "
                   "comma-separate); default: every registered model")
    p.add_argument("--target", "-t", action="append", help="onnx, tflite, coreml, executorch (repeat or "
                   "comma-separate); default: every installed target. PyTorch eager is always measured")
    p.add_argument("--precision", "-p", action="append", help="precision(s), default fp32")
    p.add_argument("--threads", type=_ints, default=[1], help="thread counts, e.g. 1,2 (default 1)")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES,
                   help=f"stream models: frames streamed per runtime, also the video of the stream curve "
                        f"(100-frame windows from 1000 frames on; default {DEFAULT_FRAMES})")
    p.add_argument("--clips", type=int, default=DEFAULT_CLIPS,
                   help=f"clip models: clips run per runtime (default {DEFAULT_CLIPS})")
    p.add_argument("--warmup", type=int, help="warm-up steps per runtime (default 10 frames / 2 clips)")
    p.add_argument("--windows", type=_ints, default=list(DEFAULT_WINDOWS),
                   help="clip lengths T of the stream-vs-recompute curve (default 1,2,4,8,16,32,64)")
    p.add_argument("--no-recompute", action="store_true", help="skip the stream-vs-recompute curve")
    p.add_argument("--recompute-rounds", type=int, default=3, help="rounds of the recompute curve (default 3)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--matmul-size", type=int, default=2048, help="matmul size of the peak GFLOP/s (default 2048)")
    p.add_argument("--checkpoint", "-c", help="released checkpoint (one model only); default: weights as built")
    p.add_argument("--out", "-o", type=Path, default=RESULTS_DIR,
                   help="results folder (default benchmarks/results/ under the current directory): <model>.jsonl, "
                        "table.md, plots/, README_section.md")
    p.add_argument("--export-dir", type=Path, help="keep the exported bundles here (default: a temp folder)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument("--verbose", "-v", action="store_true", help="show the export stages")
    return p


def summary_line(name: str, rows: list[dict[str, Any]], out: Path) -> str:
    """One line per model: every runtime's median, speedup vs PyTorch and parity; stream flatness."""
    parts = []
    for r in rows:
        if r["kind"] != "runtime":
            continue
        label = r["target"] if r["target"] == "pytorch" else f"{r['target']} {r['precision']}"
        rt = r["runtime"] or {}
        lat = rt.get("latency")
        if r["status"] not in ("ok",) or not lat:
            parts.append(f"{label} t{r['threads']} {r['status']}")
            continue
        s = f"{label} t{r['threads']} {lat['median_ms']:.3g} {lat['unit']}"
        if rt.get("vs_pytorch"):
            s += f" ({rt['vs_pytorch']['speedup_median']:.3g}x vs pytorch"
            err = rt["parity"].get("bench_max_abs_err_logits")
            s += f", err {err:.1e})" if err is not None else ")"
        parts.append(s)
    for r in rows:
        if r["kind"] == "stream_vs_recompute":
            c = r["curve"]
            flat = ", ".join(f"{k} {v:.2f}" for k, v in c["video"]["late_over_early_interleaved"].items() if v)
            ratio = c["recompute_over_stream"][-1] if c["windows"] else None
            s = f"t{r['threads']} stream cost late/early over {c['video']['frames']} frames: {flat or '-'}"
            if ratio:
                s += f"; recompute T={c['windows'][-1]} = {ratio:.3g}x stream"
            parts.append(s)
    return f"bench {name}: " + " | ".join(parts) + f" -> {out / (name + '.jsonl')}"


def main(argv: Sequence[str] | None = None, *, prog: str = "stexport bench") -> int:
    args = parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    import stexport
    from stexport.models import UnknownNameError, get_entry
    from stexport.targets import get_target

    models = []
    for pattern in _names(args.model) or ["*"]:  # names or shell globs ("movinet_a0*")
        matched = stexport.list_models(pattern) if any(ch in pattern for ch in "*?[") else [pattern]
        models += [m for m in matched if m not in models]
    targets = _names(args.target)
    if not models:
        print(f"{prog}: error: no registered model matches {', '.join(_names(args.model) or [])}", file=sys.stderr)
        return 2
    try:
        for m in models:
            get_entry(m)
        for t in targets or []:
            get_target(t)
    except UnknownNameError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if args.checkpoint and len(models) != 1:
        print(f"{prog}: error: --checkpoint needs exactly one --model", file=sys.stderr)
        return 2
    from stexport.benchmarks.suite import run_bench

    failed = 0
    total = 0
    for m in models:
        try:
            rows = run_bench(m, targets=targets, precisions=_names(args.precision) or ["fp32"],
                             threads=args.threads, frames=args.frames, clips=args.clips, warmup=args.warmup,
                             windows=[] if args.no_recompute else args.windows,
                             recompute_rounds=args.recompute_rounds, measure_memory=not args.no_memory,
                             matmul_size=args.matmul_size, out_dir=args.out, export_dir=args.export_dir,
                             checkpoint=args.checkpoint, plots=not args.no_plots, progress=not args.quiet,
                             verbose=args.verbose)
        except Exception as e:  # one broken model does not stop the suite
            if len(models) == 1:
                raise
            print(f"bench {m}: FAILED before any row: {type(e).__name__}: {e}", flush=True)
            failed += 1
            continue
        failed += sum(r["status"] == "failed" for r in rows)
        total += len(rows)
        print(summary_line(m, rows, args.out), flush=True)
    print(f"bench: {len(models)} model(s), {total} rows, {failed} failed; table {args.out / 'table.md'}, "
          f"README section {args.out / 'README_section.md'}", flush=True)
    return 1 if failed else 0
