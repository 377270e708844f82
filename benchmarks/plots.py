"""PNG plots with matplotlib (Agg backend): latency per target, stream vs recompute, accuracy vs latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _label(row: dict[str, Any]) -> str:
    t = row["target"] if row["target"] == "pytorch" else f"{row['target']} {row['precision']}"
    return f"{t} ({row['threads']}t)"


def latency_plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Horizontal bars: median latency per runtime (whisker to p90), speedup vs PyTorch written beside."""
    rs = [r for r in rows if r["kind"] == "runtime" and r["runtime"] and r["runtime"]["latency"]]
    if not rs:
        return False
    rs.sort(key=lambda r: (r["threads"], r["target"] != "pytorch", r["target"], r["precision"]))
    med = [r["runtime"]["latency"]["median_ms"] for r in rs]
    p90 = [r["runtime"]["latency"]["p90_ms"] for r in rs]
    unit = rs[0]["runtime"]["latency"]["unit"]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rs) + 1.4))
    y = list(range(len(rs)))
    colors = ["#888888" if r["target"] == "pytorch" else "#1f77b4" for r in rs]
    ax.barh(y, med, xerr=[[0] * len(rs), [max(0.0, p - m) for m, p in zip(med, p90)]], color=colors, capsize=3)
    ax.set_yticks(y, [_label(r) for r in rs])
    ax.invert_yaxis()
    for i, r in enumerate(rs):
        vs = r["runtime"]["vs_pytorch"]
        note = f"{med[i]:.3g} ms" + (f"  ({vs['speedup_median']:.2g}x vs PyTorch)" if vs else "")
        ax.text(max(med[i], p90[i]), i, "  " + note, va="center", fontsize=8)
    ax.set_xlabel(f"{unit} (median; whisker to p90)")
    ax.set_xlim(0, max(p90 + med) * 1.8)
    model = rs[0]["model"]["name"]
    ax.set_title(f"{model}: latency per runtime (interleaved, same run)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def recompute_plot(row: dict[str, Any], path: Path) -> bool:
    """Left: cost per new frame vs clip length T (recompute grows, stream flat). Right: along the video."""
    c = row.get("curve")
    if not c:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    ts = c["windows"]
    rec = c["recompute_ms_per_frame"]
    a.plot([t for t, v in zip(ts, rec) if v is not None], [v for v in rec if v is not None], "o-",
           label="recompute: clip forward over last T frames")
    st = c["stream_ms_per_frame"]
    a.plot([t for t, v in zip(ts, st) if v is not None], [v for v in st if v is not None], "s-",
           label="stream: one step, state carried")
    a.set_xscale("log", base=2)
    a.set_yscale("log")
    a.set_xlabel("clip length T (frames)")
    a.set_ylabel("ms per new frame")
    a.set_title(f"PyTorch eager, {row['threads']} thread(s), side by side", fontsize=9)
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    v = c["video"]
    xs = [s + v["window"] for s in v["start_frames"]]
    for name, ys in v["stream_ms_per_frame"].items():
        late = v["late_over_early_interleaved"].get(name)
        b.plot(xs, ys, "-", label=f"stream, {name}" + (f" (late/early {late:.3g}, interleaved)" if late else ""))
    if xs and v.get("sliding_recompute_ms_per_frame"):
        b.plot(xs, [v["sliding_recompute_ms_per_frame"]] * len(xs), "--",
               label=f"recompute sliding {v['sliding_window']}-frame clip (PyTorch)")
    if xs and v.get("full_prefix_recompute_ms_per_frame_extrapolated"):
        b.plot(xs, v["full_prefix_recompute_ms_per_frame_extrapolated"], ":",
               label="recompute whole video so far (linear extrapolation beyond largest T)")
    b.set_yscale("log")
    b.set_xlabel(f"frame position in the video (medians over {v['window']}-frame windows)")
    b.set_ylabel("ms per new frame")
    b.set_title(f"{v['frames']}-frame video", fontsize=9)
    b.legend(fontsize=7)
    b.grid(alpha=0.3)
    fig.suptitle(f"{row['model']['name']}: stream vs recompute", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def accuracy_plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Reported top-1 vs measured median latency, one marker per model x runtime (1 thread rows)."""
    pts = [r for r in rows if r["kind"] == "runtime" and r["model"].get("reported_accuracy") and r["runtime"]
           and r["runtime"]["latency"] and r["threads"] == min(x["threads"] for x in rows)]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    targets = sorted({r["target"] for r in pts})
    markers = dict(zip(targets, "os^Dvx*"))
    for t in targets:
        sel = [r for r in pts if r["target"] == t]
        ax.scatter([r["runtime"]["latency"]["median_ms"] for r in sel],
                   [r["model"]["reported_accuracy"]["top1"] for r in sel], marker=markers[t], label=t)
    for r in pts:
        if r["target"] == "pytorch":
            acc = r["model"]["reported_accuracy"]
            ax.annotate(f"{r['model']['name']} ({acc.get('dataset') or ''})",
                        (r["runtime"]["latency"]["median_ms"], acc["top1"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set_xlabel("median latency, ms per step (frame for stream models, clip for clip models)")
    ax.set_ylabel("reported top-1 (%), authors' checkpoint")
    ax.set_title("accuracy vs latency (accuracy on different datasets: compare within a dataset)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
