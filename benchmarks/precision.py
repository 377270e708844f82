"""Precision study on the trained motion7 models: what fp16 / int8 cost in accuracy, fidelity, size and speed.

    python -m stexport.benchmarks.precision                  # both motion7 models, every target x precision x form
    python -m stexport.benchmarks.precision --drift 10000    # only the long-stream drift (fp16, int8)

For each model x target x precision x form -- ``stream``: the stream artifact stepped frame by frame from zero
state; ``clip``: the clip-form artifact on the whole clip -- the model is exported with the parity gate on
(a failed gate is recorded, and the artifact is measured anyway), then scored on the first ``--clips`` clips of the
motion7 test split: top-1 accuracy (last frame), top-1 agreement with PyTorch fp32 in the same form, logit SNR
and max abs logit error vs PyTorch fp32; the artifact's size; the median time of one call at 1 thread (stream:
one frame; clip: one 8-frame clip). Core ML runs only on macOS: elsewhere its rows hold the size only.

``--drift N``: the fp16 ONNX and TFLite, int8 TFLite, ONNX Runtime and ExecuTorch, and fp32 TFLite stream
artifacts and PyTorch float32 step through N frames (motion7 test clips back to back, state carried throughout;
the last 100 frames replay the first 100, so the two windows differ in state only), compared per frame with
PyTorch in float64.

Writes ``<out>/rows.jsonl`` (one JSON row per export), ``<out>/table.md``, ``<out>/drift.json`` and ``<out>/drift.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stexport.benchmarks.suite import RESULTS_DIR

RESULTS = RESULTS_DIR / "precision"
MODELS = ("movinet_a0_stream_motion7", "tsm_mobilenetv2_online_motion7")
FORMS = ("stream", "clip")


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    return float("inf") if noise == 0 else round(10 * np.log10(float(np.sum(ref.astype(np.float64) ** 2)) / noise), 1)


def _reference(name: str, data: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """PyTorch fp32 last-frame logits per form (clip forward, and ``step`` frame by frame)."""
    import stexport
    from stexport.frames import preprocess
    from stexport.models import get_entry
    from stexport.train import module_logits

    model = stexport.create_model(name)
    pre = get_entry(name).preprocess
    x = torch.stack([preprocess(c, pre) for c in data[0]]).transpose(1, 2)
    return {"clip": module_logits(model, x, streamed=False).numpy(),
            "stream": module_logits(model, x, streamed=True).numpy()}


def _time_ms(run: Any, feeds: list[dict[str, np.ndarray]], spec: Any, *, calls: int, warmup: int = 10) -> float:
    state = spec.zero_state()
    times = []
    for i in range(warmup + calls):
        f = {**feeds[i % len(feeds)], **state}
        t0 = time.perf_counter()
        out = run(f)
        dt = time.perf_counter() - t0
        state = {s.name: np.asarray(out[s.output], np.float32) for s in spec.states}
        if i % len(feeds) == len(feeds) - 1:
            state = spec.zero_state()
        if i >= warmup:
            times.append(dt)
    return float(f"{1e3 * np.median(times):.4g}")


def measure(name: str, target: str, precision: str, form: str, data: tuple[np.ndarray, np.ndarray],
            ref: dict[str, np.ndarray], workdir: Path, *, calls: int = 200) -> dict[str, Any]:
    """One row: export (gate on; measured anyway if the gate fails) and score on ``data``."""
    import stexport
    from stexport.errors import ParityError
    from stexport.frames import preprocess
    from stexport.streaming import load_bundle_runner
    from stexport.train import runner_logits

    row: dict[str, Any] = {"model": name, "target": target, "precision": precision, "form": form}
    out = workdir / f"{precision}-{form}"
    t0 = time.perf_counter()
    try:
        try:
            bundle = stexport.export(name, target=target, precision=precision, form=form, out=out,
                                     progress=lambda s: None)
        except ParityError as e:
            row["gate_error"] = str(e)
            bundle = stexport.export(name, target=target, precision=precision, form=form, out=out, verify=False,
                                     progress=lambda s: None)
    except Exception as e:  # an export that fails is a row too
        row.update(status="failed", error=f"{type(e).__name__}: {e}"[:500])
        return row
    manifest = json.loads((bundle / "manifest.json").read_text())
    gate = manifest["parity"]
    row.update(export_seconds=round(time.perf_counter() - t0, 1), bytes=manifest["artifact"]["bytes"],
               boundary={t["name"]: t["dtype"] for t in manifest["inputs"] + manifest["outputs"]},
               details=manifest["precision_details"])
    if "gate_error" in row:  # measured anyway, from the ungated re-export
        row["gate"] = {"passed": False, "error": row.pop("gate_error")}
    elif not gate.get("executed", True):
        row.update(status="not_executed", reason=gate.get("reason"))
        return row
    else:
        row["gate"] = {k: gate.get(k) for k in ("passed", "max_abs_err", "tolerance", "top1_agreement",
                                                "logits_snr_db", "reference_logit_spread")}
    runner, spec, pre = load_bundle_runner(bundle, threads=1)
    clips, labels = data
    x = [preprocess(c, pre) for c in clips]
    got = np.stack([runner_logits(runner.run, spec, c) for c in x])
    r = ref[form]
    if form == "stream":
        feeds = [{"frame": x[0][t:t + 1].contiguous().numpy()} for t in range(x[0].shape[0])]
    else:
        from stexport.models import pack_clip

        feeds = [{"clip": pack_clip(x[0].transpose(0, 1).unsqueeze(0), spec.inputs[0].layout).numpy()}]
    row.update(status="ok" if row["gate"]["passed"] else "gate_failed", clips=len(labels),
               accuracy=float(np.mean(got.argmax(1) == labels)),
               reference_accuracy=float(np.mean(r.argmax(1) == labels)),
               top1_agreement=float(np.mean(got.argmax(1) == r.argmax(1))), snr_db=_snr_db(r, got),
               max_abs_err=float(f"{np.max(np.abs(r.astype(np.float64) - got)):.3g}"),
               reference_max_abs_logit=float(f"{np.max(np.abs(r)):.3g}"),
               ms=_time_ms(runner.run, feeds, spec, calls=calls if form == "stream" else max(20, calls // 8)),
               ms_unit="per frame" if form == "stream" else f"per {x[0].shape[0]}-frame clip")
    return row


# ONNX Runtime fp16 computes in float16 (its state-update path float32); LiteRT fp16 keeps float16 weights and
# computes in float32 on this CPU (XNNPACK's float16 arithmetic is an ARM feature).
#: frames in each of the two windows compared (the first ones, and the last ones, which replay them)
DRIFT_WINDOW = 100
DRIFT_RUNTIMES = (("onnx", "fp16"), ("tflite", "fp16"), ("tflite", "int8"), ("onnx", "int8"), ("executorch", "int8"),
                  ("tflite", "fp32"))


def drift(name: str, frames: int, workdir: Path) -> dict[str, Any]:
    """The DRIFT_RUNTIMES streams and PyTorch float32 vs PyTorch float64 over ``frames`` frames."""
    import stexport
    from stexport import motion
    from stexport.frames import preprocess
    from stexport.models import get_entry
    from stexport.streaming import open_stream

    entry = get_entry(name)
    model32 = stexport.create_model(name)
    model64 = copy.deepcopy(model32).double()
    n_clips = -(-frames // motion.FRAMES)
    clips, _ = motion.motion_clips(range(n_clips), split="test", size=entry.input_size)
    video = clips.reshape(-1, *clips.shape[2:])[:frames].copy()
    if frames >= 2 * DRIFT_WINDOW:  # the last window replays the first's frames: they differ in state, not content
        video[-DRIFT_WINDOW:] = video[:DRIFT_WINDOW]
    streams = {}  # each artifact's own state contract, kept in its runtime
    for t, p in DRIFT_RUNTIMES:
        bundle = stexport.export(name, target=t, precision=p, out=workdir / f"drift-{t}-{p}", progress=lambda s: None)
        streams[f"{t} {p}"] = open_stream(bundle, threads=1)
    s32 = model32.init_state(1)
    s64 = {k: v.double() for k, v in model32.init_state(1).items()}
    names = [*streams, "pytorch float32"]
    errs: dict[str, list[float]] = {k: [] for k in names}
    agree: dict[str, int] = dict.fromkeys(names, 0)
    last: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(frames):
            x = preprocess(video[i:i + 1], entry.preprocess)
            l64, s64 = model64.step(x.double(), s64)
            ref = l64.numpy()
            l32, s32 = model32.step(x, s32)
            outs = {"pytorch float32": l32.numpy()}
            for k, stream in streams.items():
                outs[k] = stream.step({"frame": x.numpy()})
            for k, v in outs.items():
                errs[k].append(float(np.max(np.abs(v.astype(np.float64) - ref))))
                agree[k] += int(np.argmax(v) == np.argmax(ref))
                last[k] = v
            last["float64"] = ref
    res: dict[str, Any] = {"model": name, "frames": frames, "input": "motion7 test clips back to back, state "
                           f"carried throughout; the last {DRIFT_WINDOW} frames replay the first {DRIFT_WINDOW}",
                           "reference": "PyTorch float64 (model.double(), float64 state)",
                           "seconds": round(time.perf_counter() - t0, 1),
                           "reference_max_abs_logit_at_last_frame": float(np.max(np.abs(last["float64"])))}
    for k in names:
        e = np.asarray(errs[k])
        res[k] = {"max_abs_err_at_last_frame": float(f"{e[-1]:.3g}"),
                  "max_abs_err_over_stream": float(f"{e.max():.3g}"),
                  "max_abs_err_first_100": float(f"{e[:DRIFT_WINDOW].max():.3g}"),
                  "max_abs_err_last_100": float(f"{e[-DRIFT_WINDOW:].max():.3g}"),
                  "top1_agreement_over_stream": round(agree[k] / frames, 5)}
    return res


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| model | target | precision | form | accuracy | top-1 agreement | logit SNR (dB) | max abs err | size "
            "(KB) | ms / call | gate |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        model = r["model"].replace("_motion7", "")
        if r.get("status") == "failed":
            lines.append(f"| {model} | {r['target']} | {r['precision']} | {r['form']} | failed: {r['error'][:80]} "
                         "| | | | | | |")
            continue
        size = f"{r['bytes'] / 1024:.0f}"
        if r.get("status") == "not_executed":
            why = r.get("reason") or ""
            gate = "FAIL" if "gate_error" in r else "spec checked" if r["target"] == "coreml" else "–"
            lines.append(f"| {model} | {r['target']} | {r['precision']} | {r['form']} | not run: "
                         f"{r.get('gate_error', why)[:90]} | | | | {size} | | {gate} |")
            continue
        unit = "frame" if r["form"] == "stream" else "clip"
        gate = "pass" if r["gate"]["passed"] else "FAIL"
        lines.append(f"| {model} | {r['target']} | {r['precision']} | {r['form']} | {r['accuracy']:.1%} | "
                     f"{r['top1_agreement']:.1%} | {r['snr_db']} | {r['max_abs_err']:.2g} | {size} | "
                     f"{r['ms']:.3g} / {unit} | {gate} |")
    return "\n".join(lines) + "\n"


def drift_table(results: Sequence[dict[str, Any]]) -> str:
    lines = ["| model | runtime | max abs err: first 100 frames | last 100 frames | last frame | whole stream | "
             "top-1 agreement with float64 |", "|---|---|---|---|---|---|---|"]
    for d in results:
        for k in (*(f"{t} {p}" for t, p in DRIFT_RUNTIMES), "pytorch float32"):
            v = d[k]
            lines.append(f"| {d['model'].replace('_motion7', '')} ({d['frames']} frames) | {k} | "
                         f"{v['max_abs_err_first_100']:.3g} | {v['max_abs_err_last_100']:.3g} | "
                         f"{v['max_abs_err_at_last_frame']:.3g} | {v['max_abs_err_over_stream']:.3g} | "
                         f"{v['top1_agreement_over_stream']:.2%} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from stexport.targets import TARGETS
    from stexport.train import eval_clips

    p = argparse.ArgumentParser(prog="python -m stexport.benchmarks.precision", description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", help=f"default: {', '.join(MODELS)}")
    p.add_argument("--target", action="append", help="default: every installed target")
    p.add_argument("--precision", action="append", help="default: every precision the target offers")
    p.add_argument("--form", action="append", choices=FORMS, help="default: stream and clip")
    p.add_argument("--clips", type=int, default=700, help="test clips scored (default: the whole 700-clip split)")
    p.add_argument("--calls", type=int, default=200, help="timed calls per stream artifact (clip: 1/8 of it)")
    p.add_argument("--drift", type=int, metavar="FRAMES", help="run only the long-stream drift check")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    models = args.model or list(MODELS)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stexport-precision-") as tmp:
        if args.drift:
            results = [drift(m, args.drift, Path(tmp)) for m in models]
            (args.out / "drift.json").write_text(json.dumps(results, indent=2) + "\n")
            (args.out / "drift.md").write_text(drift_table(results))
            print(drift_table(results))
            return 0
        data = eval_clips(clips=args.clips)
        rows = []
        (args.out / "rows.jsonl").write_text("")
        for name in models:
            ref = _reference(name, data)
            for t in (args.target or [t.name for t in TARGETS.values() if t.installed()]):
                for prec in (args.precision or TARGETS[t].precisions):
                    if prec not in TARGETS[t].precisions:
                        continue
                    for form in (args.form or FORMS):
                        row = measure(name, t, prec, form, data, ref, Path(tmp) / name / t, calls=args.calls)
                        rows.append(row)
                        print(json.dumps({k: row.get(k) for k in ("model", "target", "precision", "form", "status",
                                                                   "accuracy", "top1_agreement", "snr_db", "ms")}),
                              flush=True)
                        with (args.out / "rows.jsonl").open("a") as f:
                            f.write(json.dumps(row) + "\n")
    (args.out / "table.md").write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
