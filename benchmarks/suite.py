"""One model, every runtime, side by side: `run_bench` (the Python entry point behind ``stexport bench``).

For a model it exports to each target x precision (``stexport.export(..., verify=True)``: the parity error comes
from the manifest), then for each thread count: measures this machine's matmul peak, steps PyTorch eager and every
exported runtime over the same synthetic video in interleaved rounds (per frame for stream models, per clip for
clip models), measures each runtime's peak RSS in a subprocess, and for stream models times stream vs recompute.
Rows (one JSON schema, ``results.schema.json``) go to ``<out_dir>/<model>.jsonl``; the markdown table, plots and
README section are rebuilt from every ``*.jsonl`` in ``out_dir``.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

import stexport
from stexport.benchmarks import facts, memory
from stexport.benchmarks.machine import conv_ceiling, machine_facts, matmul_peak, merge_ceilings, merge_peaks
from stexport.benchmarks.progress import Progress
from stexport.benchmarks.recompute import DEFAULT_WINDOWS, recompute_at, stream_vs_recompute
from stexport.benchmarks.timing import Contender, curve_window, interleaved, position_curve, speedup_vs, summarize
from stexport.frames import preprocess, synthetic_frames
from stexport.models import ModelEntry, VideoModel, create_model, get_entry, pack_clip, preprocess_for
from stexport.parity import torch_runner
from stexport.spec import GraphModule, IOSpec, build_spec
from stexport.streaming import CopyStepper, stepper
from stexport.targets import TARGETS, get_target

SCHEMA_VERSION = 1
DEFAULT_FRAMES = 300
DEFAULT_CLIPS = 20
#: where results go by default: ``benchmarks/results`` under the current directory (from the project root, the
#: committed folder; from anywhere else a folder of its own there, never the installed package's files)
RESULTS_DIR = Path("benchmarks") / "results"
REFERENCE = "pytorch"
WEIGHTS_NOTE = ("as built (no checkpoint), each scalar gate that is 0 as built (MoViNet's ReZero alpha) set to 0.5 so "
                "that no converter drops the branch it gates: latency and memory do not depend on the weight values "
                "otherwise")


@dataclass
class _Export:
    target: str
    precision: str
    status: str  # ok | failed | skipped
    error: str | None = None
    bundle: Path | None = None
    manifest: dict[str, Any] | None = None
    total_seconds: float | None = None

    @property
    def key(self) -> str:
        return f"{self.target}:{self.precision}"


def installed_targets() -> list[str]:
    return [name for name, t in TARGETS.items() if t.installed()]


def _resolve(model: str | torch.nn.Module, checkpoint: str | Path | None) -> tuple[VideoModel, str, ModelEntry | None]:
    if isinstance(model, str):
        torch.manual_seed(0)
        module = create_model(model, checkpoint=checkpoint)
        if checkpoint is None:
            _open_zero_gates(module)
        return module, model, get_entry(model)
    name = str(getattr(model, "registry_name", type(model).__name__.lower()))
    try:
        entry: ModelEntry | None = get_entry(name)
    except KeyError:
        entry = None
    return model.eval(), name, entry


def _open_zero_gates(module: VideoModel) -> None:
    """Set every scalar parameter that is exactly 0 (as built: MoViNet's ReZero ``alpha``) to 0.5. With ``x + 0 *
    branch`` a converter may fold the branch away (LiteRT's did, for a base MoViNet: a row timed a graph without its
    residual branches, at "136% of the matmul peak"), so every runtime would not time the same graph."""
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 0 and float(p) == 0.0:
                p.fill_(0.5)
    module.refold()


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf -> None, tuples -> lists, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _model_info(module: VideoModel, entry: ModelEntry | None, name: str, spec: IOSpec, graph: GraphModule, *,
                checkpoint: str | Path | None = None) -> dict[str, Any]:
    try:
        gflops: float | None = float(f"{facts.count_flops(graph, spec) / 1e9:.4g}")
    except Exception:  # a model the counter cannot run: facts without FLOPs
        gflops = None
    return {
        "name": name,
        "family": entry.family if entry else type(module).__name__,
        "form": spec.form,
        "streaming": bool(module.streaming),
        "step_unit": "frame" if spec.form == "stream" else "clip",
        "num_frames": int(module.num_frames),
        "input_size": list(module.frame_size()),
        "num_classes": int(module.num_classes),
        "parameters": facts.count_parameters(module),
        "gflops_per_step": gflops,
        "flops_counter": facts.FLOP_COUNTER,
        "weights": WEIGHTS_NOTE if checkpoint is None else f"checkpoint {Path(checkpoint).name}",
        "reported_accuracy": facts.reported_accuracy(entry),
    }


def _inputs(module: VideoModel, entry: ModelEntry | None, spec: IOSpec, n_steps: int) -> tuple[Any, torch.Tensor]:
    """``feeds_at(i)`` for the timing loop and the decoded video ``[V, 3, H, W]`` (looped: frame i = i % V)."""
    h, w = module.frame_size()
    pre = preprocess_for(entry, (h, w))
    t = int(module.num_frames)
    count = min(max(n_steps, 2), 64) if spec.form == "stream" else 4 * t
    video = preprocess(synthetic_frames(count, h, w), pre)
    if spec.form == "stream":
        frames = [video[i:i + 1].contiguous().numpy() for i in range(count)]
        return (lambda i: {"frame": frames[i % count]}), video
    clips = [pack_clip(video[k * t:(k + 1) * t].transpose(0, 1).unsqueeze(0), str(module.clip_layout))
             .contiguous().numpy() for k in range(4)]
    return (lambda i: {"clip": clips[i % 4]}), video


def _export_all(module: VideoModel, targets: Sequence[str], precisions: Sequence[str], root: Path, bar: Progress,
                verbose: bool) -> list[_Export]:
    out = []
    for target in targets:
        tgt = get_target(target)
        for precision in precisions:
            bar.set_description(f"export {target} {precision}")
            ex = _Export(target, precision, "ok")
            if precision not in tgt.precisions:
                ex.status, ex.error = "skipped", f"precision {precision} not available for {target}"
            else:
                t0 = time.perf_counter()
                try:
                    tgt.load()
                    ex.bundle = stexport.export(module, target=target, out=root / precision, precision=precision,
                                                verify=True,
                                                progress=(lambda m: bar.write(f"    {m}")) if verbose else _quiet)
                    ex.manifest = json.loads((ex.bundle / "manifest.json").read_text())
                    ex.total_seconds = round(time.perf_counter() - t0, 2)
                except Exception as e:  # a failed export is a result row, the suite goes on
                    skip = type(e).__name__ in ("MissingExtraError", "UnsupportedModelError")  # not a failure
                    ex.status, ex.error = ("skipped" if skip else "failed",
                                           f"{type(e).__name__}: {e}")
            if ex.error:
                bar.write(f"  {target} {precision}: {ex.status}: {ex.error.splitlines()[0][:300]}")
            out.append(ex)
            bar.update(1)
    return out


def _quiet(message: str) -> None:
    pass


def _model_file(module: VideoModel, root: Path) -> tuple[Path, list[str]]:
    """The module pickled for the PyTorch memory worker, and the sys.path its class needs to be imported."""
    path = root / "pytorch_model.pt"
    torch.save(module, path)
    mod = type(module).__module__
    extra = [] if mod.startswith("stexport.") else [str(Path(inspect.getfile(type(module))).resolve().parent)]
    return path, extra


def _measure_memory(runtime: str, *, spec: IOSpec, threads: int, steps: int, artifact: Path | None,
                    model_file: tuple[Path, list[str]] | None) -> tuple[dict[str, Any] | None, str | None]:
    try:
        if runtime == REFERENCE:
            assert model_file is not None
            m = memory.measure(runtime=runtime, spec=spec, threads=threads, steps=steps, model_file=model_file[0],
                               sys_path=model_file[1])
        else:
            m = memory.measure(runtime=runtime, spec=spec, threads=threads, steps=steps, artifact=artifact)
        return m, None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def _row(kind: str, *, run_id: str, status: str, error: str | None, model_info: dict[str, Any], target: str,
         precision: str, threads: int, machine: dict[str, Any], runtime: dict[str, Any] | None = None,
         curve: dict[str, Any] | None = None) -> dict[str, Any]:
    return _clean({
        "schema_version": SCHEMA_VERSION, "kind": kind, "run_id": run_id,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": status, "error": error, "model": model_info, "target": target, "precision": precision,
        "threads": threads, "machine": machine, "runtime": runtime, "curve": curve,
    })


def _throughput(gflops: float | None, median_ms: float | None, peak: dict[str, Any],
                ceiling: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Achieved GFLOP/s, and its fraction of the matmul peak and of the conv ceiling (median) of the same run."""
    if not gflops or not median_ms:
        return None
    rate = gflops / (median_ms / 1e3)
    out = {"gflops_per_s": float(f"{rate:.4g}"), "matmul_peak_gflops": peak["gflops_best"],
           "fraction_of_matmul_peak": float(f"{rate / peak['gflops_best']:.4g}")}
    if ceiling:
        out.update(conv_ceiling_gflops=ceiling["gflops_median"],
                   fraction_of_conv_ceiling=float(f"{rate / ceiling['gflops_median']:.4g}"))
    return out


def run_bench(model: str | torch.nn.Module, *, targets: Sequence[str] | None = None,
              precisions: Sequence[str] = ("fp32",), threads: Sequence[int] = (1,), frames: int = DEFAULT_FRAMES,
              clips: int = DEFAULT_CLIPS, warmup: int | None = None, windows: Sequence[int] = DEFAULT_WINDOWS,
              recompute_rounds: int = 3, memory_steps: int | None = None, measure_memory: bool = True,
              matmul_size: int = 2048,
              out_dir: str | Path | None = RESULTS_DIR, export_dir: str | Path | None = None,
              checkpoint: str | Path | None = None, plots: bool = True, progress: bool = True, verbose: bool = False,
              run_id: str | None = None) -> list[dict[str, Any]]:
    """Benchmark one model (a registered name or a module) on ``targets`` (default: every installed one) and
    PyTorch eager; returns the result rows and, unless ``out_dir`` is None, writes them and rebuilds the reports.

    ``frames``: stream models step this many frames per runtime (the latency sample and the video of the
    position curve: windows of 100 frames when ``frames >= 1000``); ``clips``: clip models run this many clips per
    runtime. ``windows``: clip lengths T of the stream-vs-recompute curve (stream models; empty to skip).
    """
    run_id = run_id or _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    module, name, entry = _resolve(model, checkpoint)
    targets = list(installed_targets() if targets is None else targets)
    for t in targets:
        get_target(t)  # unknown names fail before any work
    form = "stream" if module.streaming else "clip"
    spec = build_spec(module, form=form)
    graph = GraphModule(module, spec).eval()
    stream = form == "stream"
    steps = frames if stream else clips
    warm = warmup if warmup is not None else (min(10, steps) if stream else 2)
    mem_steps = memory_steps if memory_steps is not None else (min(10, steps) if stream else 2)
    chunk = min(10, steps) if stream else 1
    windows = list(windows) if stream else []
    feeds_at, video = _inputs(module, entry, spec, steps + warm)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads[0])
    model_info = _model_info(module, entry, name, spec, graph, checkpoint=checkpoint)

    n_runtimes = 1 + len(targets) * len(precisions)
    probe = curve_window(steps) if stream else 0
    per_threads = n_runtimes * (warm + steps + probe) + (n_runtimes if measure_memory else 0) + \
        recompute_rounds * len(windows)
    bar = Progress(len(targets) * len(precisions) + len(threads) * per_threads, f"bench {name}", enabled=progress)
    tmp = None if export_dir is not None else tempfile.mkdtemp(prefix="stexport-bench-")
    root = Path(export_dir if export_dir is not None else tmp)  # type: ignore[arg-type]
    root.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    try:
        exports = _export_all(module, targets, precisions, root, bar, verbose)
        model_file = None
        if measure_memory:
            try:
                model_file = _model_file(module, root)
            except Exception as e:
                bar.write(f"  pytorch model cannot be pickled for the memory worker: {e}")
        for n in threads:
            torch.set_num_threads(n)
            bar.set_description(f"{name} t{n}: matmul peak")
            peak_before = matmul_peak(threads=n, size=matmul_size)
            ceiling_before = conv_ceiling(threads=n)
            contenders = [Contender(REFERENCE, partial(CopyStepper, torch_runner(graph), spec))]
            runnable: dict[str, _Export] = {}
            idle: list[dict[str, Any]] = []  # exports that do not run here: rows after the measured ones
            for ex in exports:
                if ex.status != "ok":
                    idle.append({"status": ex.status, "error": ex.error, "target": ex.target,
                                 "precision": ex.precision})
                    bar.update(warm + steps + probe + (1 if measure_memory else 0))
                    continue
                assert ex.bundle is not None and ex.manifest is not None
                try:
                    runner = get_target(ex.target).load().Runner(ex.bundle / ex.manifest["artifact"]["file"],
                                                                 IOSpec.from_json(ex.manifest),
                                                                 threads=n)
                except RuntimeError as e:  # Core ML off macOS: exported and spec-checked, not executed
                    status = "not_executed" if type(e).__name__ == "RuntimeUnavailable" else "failed"
                    idle.append({"status": status, "error": str(e), "target": ex.target, "precision": ex.precision,
                                 "runtime": _runtime_facts(ex, None, model_info, peak_before, None, None, None)})
                    bar.update(warm + steps + probe + (1 if measure_memory else 0))
                    continue
                contenders.append(Contender(ex.key, partial(stepper, runner)))
                runnable[ex.key] = ex
            bar.set_description(f"{name} t{n}: latency ({len(contenders)} runtimes interleaved)")
            interleaved(contenders, feeds_at, steps=steps, warmup=warm, chunk=chunk, reference=REFERENCE,
                        probe=probe, tick=bar.update)
            ref = contenders[0]
            peak = merge_peaks(peak_before, matmul_peak(threads=n, size=matmul_size))
            ceiling = merge_ceilings(ceiling_before, conv_ceiling(threads=n))
            machine = machine_facts(threads=n, matmul=peak, conv=ceiling)
            common = {"run_id": run_id, "model_info": model_info, "threads": n, "machine": machine}
            mem: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
            for c in contenders:
                if measure_memory:
                    bar.set_description(f"{name} t{n}: peak RSS {c.name}")
                    ex_c = runnable.get(c.name)
                    artifact = ex_c.bundle / ex_c.manifest["artifact"]["file"] if ex_c and ex_c.bundle and \
                        ex_c.manifest else None
                    own = IOSpec.from_json(ex_c.manifest) if ex_c and ex_c.manifest else spec  # the artifact's
                    mem[c.name] = _measure_memory(ex_c.target if ex_c else REFERENCE, spec=own, threads=n,
                                                  steps=mem_steps, artifact=artifact, model_file=model_file)
                    bar.update(1)
            window = probe or curve_window(len(ref.times_ms))
            for c in contenders:
                ex_c = runnable.get(c.name)
                m, m_err = mem.get(c.name, (None, None))
                rt = _runtime_facts(ex_c, c, model_info, peak, m, ref,
                                    position_curve(c, window=window) if stream else None, warmup=warm,
                                    ceiling=ceiling)
                if m_err:
                    rt["memory_error"] = m_err
                rows.append(_row("runtime", status="failed" if c.error else "ok", error=c.error,
                                 target=ex_c.target if ex_c else REFERENCE,
                                 precision=ex_c.precision if ex_c else "fp32", runtime=rt, **common))
            rows += [_row("runtime", **common, **kw) for kw in idle]
            if stream and windows:
                bar.set_description(f"{name} t{n}: stream vs recompute")
                curve = stream_vs_recompute(module, video, windows=windows, rounds=recompute_rounds, tick=bar.update)
                curve["video"] = _video_curve(contenders, curve, int(module.num_frames), window)
                rows.append(_row("stream_vs_recompute", status="ok", error=None, target=REFERENCE, precision="fp32",
                                 curve=curve, **common))
    finally:
        torch.set_num_threads(prev_threads)
        bar.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if out_dir is not None:
        write_rows(Path(out_dir), name, rows)
        from stexport.benchmarks.report import write_reports

        write_reports(Path(out_dir), plots=plots)
    return rows


def _runtime_facts(ex: _Export | None, c: Contender | None, model_info: dict[str, Any], peak: dict[str, Any],
                   mem: dict[str, Any] | None, ref: Contender | None, curve: dict[str, Any] | None, *,
                   warmup: int = 0, ceiling: dict[str, Any] | None = None) -> dict[str, Any]:
    unit = f"ms per {model_info['step_unit']}"
    latency = None
    if c is not None and c.times_ms:
        latency = {"unit": unit, "warmup_steps": warmup, "steps": len(c.times_ms), "rounds": len(c.round_medians_ms),
                   "state_loop": c.loop, **summarize(c.times_ms)}
    if ex is None:
        name = f"torch {torch.__version__} eager"
        export = None
        parity: dict[str, Any] = {"source": "reference", "max_abs_err_logits": 0.0, "top1_agreement": 1.0,
                                  "steps": None, "passed": True, "bench_max_abs_err_logits": None, "bench_steps": None}
    else:
        assert ex.manifest is not None
        man = ex.manifest
        p = man["parity"]
        executed = p.get("executed", True) and not p.get("skipped")
        name = p.get("runtime") or get_target(ex.target).runtime
        export = {"seconds": man["artifact"]["export_seconds"], "total_seconds": ex.total_seconds,
                  "artifact_bytes": man["artifact"]["bytes"], "artifact": man["artifact"]["file"],
                  "converter": man["converter"].get("converter")}
        parity = {"source": "manifest", "max_abs_err_logits": p["max_abs_err"]["logits"] if executed else None,
                  "top1_agreement": p.get("top1_agreement") if executed else None,
                  "steps": p.get("steps") if executed else None, "passed": bool(p.get("passed", False)),
                  "bench_max_abs_err_logits": float(f"{c.max_err_vs_ref:.3g}") if c and c.compared_steps else None,
                  "bench_steps": c.compared_steps if c and c.compared_steps else None}
    vs = speedup_vs(c, ref) if c is not None and ref is not None and c is not ref else None
    return {
        "name": name,
        "export": export,
        "parity": parity,
        "memory": mem,
        "latency": latency,
        "vs_pytorch": vs,
        "throughput": _throughput(model_info["gflops_per_step"], latency["median_ms"] if latency else None, peak,
                                  ceiling),
        "position_curve": curve,
    }


def _video_curve(contenders: Sequence[Contender], curve: dict[str, Any], t: int, window: int) -> dict[str, Any]:
    """Per-window stream cost along the video for every runtime, next to the recompute alternatives: the sliding
    T-frame window (measured) and recomputing the whole video so far (extrapolated from the T curve, linearly)."""
    per: dict[str, list[float]] = {}
    flat: dict[str, float] = {}
    late: dict[str, float | None] = {}
    starts: list[int] = []
    for c in contenders:
        pc = position_curve(c, window=window)
        if pc is None:
            continue
        per[c.name], flat[c.name], starts = pc["median_ms"], pc["flatness_last_over_first"], pc["start_frames"]
        late[c.name] = pc["late_over_early_interleaved"]
    prefix = [recompute_at(curve, s + window) for s in starts] if curve.get("extrapolation") else None
    return {"frames": max((len(c.times_ms) for c in contenders), default=0), "window": window,
            "start_frames": starts, "stream_ms_per_frame": per, "flatness_last_over_first": flat,
            "late_over_early_interleaved": late,
            "sliding_window": t, "sliding_recompute_ms_per_frame": recompute_at(curve, t),
            "full_prefix_recompute_ms_per_frame_extrapolated": prefix}


def write_rows(out_dir: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    """``<out_dir>/<name>.jsonl``, replaced whole: one model's rows always come from one run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.jsonl"
    tmp = path.with_suffix(".jsonl.partial")
    tmp.write_text("".join(json.dumps(r, allow_nan=False) + "\n" for r in rows))
    tmp.replace(path)
    return path
