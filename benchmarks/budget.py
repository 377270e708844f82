"""Where a MoViNet stream step's time goes in LiteRT: per block, per op type, and the state copies.

``python -m stexport.benchmarks.budget [--model movinet_a0_stream] [--rounds 7]`` (fp32)

* **Per block**: the step is cut into its parts (the stem, each block ``b{i}_l{j}`` with its own buffer and SE
  state, the head: ``conv7``, the pooled mean and the classifier), each converted with litert-torch on its own and
  run by LiteRT's Interpreter (XNNPACK, 1 thread) in interleaved rounds with the whole step, so the parts and the
  whole come from the same minutes of the same machine. A part run alone keeps its weights and activations in
  the core's caches between calls; in the whole step the other parts evict them (A0's fp32 step file is
  14.8 MB, most of it weights), so the whole is slower than the sum of its parts: the difference is what the
  caches cost.
* **State copies**: the whole step through the signature runner (every state copied in and out, as an app
  without tensor buffers does) minus ``invoke()`` alone, and the minor page faults per such step: each output
  comes back as a fresh numpy array, and once glibc has handed the freed arrays' pages back to the kernel, the
  next step's arrays fault them in again.
* **Per op type**: where ``perf`` exists, the whole step is sampled with ``perf record`` and XNNPACK's kernels are
  grouped by what they compute (1x1 convs and fully connected layers are GEMMs, depthwise convs, hard-swish,
  copies for concatenations/slices, pads, pools, elementwise, the input transpose, runtime overhead).

Writes ``benchmarks/results/budget/<model>_fp32.json`` and a plot beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from stexport.benchmarks.machine import conv_ceiling, cpu_model
from stexport.benchmarks.suite import RESULTS_DIR

#: XNNPACK / libc symbol fragments -> what they compute (first match wins)
KERNEL_GROUPS: tuple[tuple[str, str], ...] = (
    ("gemm_minmax_ukernel_1x", "fully connected (M=1 GEMM: SE and classifier)"),
    ("igemm", "full convs (stem 3x3: indirect GEMM)"),
    ("gemm", "1x1 convs (GEMM)"),
    ("dwconv", "depthwise convs (spatial and temporal)"),
    ("vhswish", "hard-swish"),
    ("memmove", "copies (concatenations, slices, state I/O)"),
    ("memcpy", "copies (concatenations, slices, state I/O)"),
    ("pad", "pads"),
    ("avgpool", "average pools"),
    ("rdsum", "means"),
    ("vlut", "int8 elementwise (table)"),
    ("lut", "int8 elementwise (table)"),
    ("vcvt", "quantize / dequantize"),
    ("transpose", "input transpose"),
    ("vmul", "elementwise"),
    ("vadd", "elementwise"),
    ("vsub", "elementwise"),
    ("vdiv", "elementwise"),
    ("vsigmoid", "elementwise"),
    ("clear_page", "page faults (state I/O buffers)"),
    ("page_fault", "page faults (state I/O buffers)"),
    ("xnn_", "XNNPACK runtime overhead"),
    ("tflite", "LiteRT interpreter overhead"),
)


class _Part(nn.Module):
    """One piece of a MoViNet stream step as a graph of its own: ``forward(x, *states) -> (y, *new states)``."""

    def __init__(self, model: nn.Module, fn: Callable[..., tuple[Tensor, ...]]) -> None:
        super().__init__()
        self.model, self.fn = model, fn  # the model as a submodule: its folded weights are this graph's buffers

    def forward(self, *args: Tensor) -> tuple[Tensor, ...]:
        return self.fn(*args)


def step_parts(model: Any) -> list[tuple[str, nn.Module, tuple[Tensor, ...]]]:
    """``[(name, module, example inputs)]``: the stem, every block, the head, with the step's own shapes."""
    layout = model.layout
    state = model.init_state(1)
    h, w = model.frame_size()
    x = layout.from_nchw(torch.rand(1, 3, h, w)).contiguous()
    r = torch.full((1, 1), 0.5)
    parts: list[tuple[str, nn.Module, tuple[Tensor, ...]]] = []
    stem = _Part(model, lambda f: (model.conv1.step(layout.from_nchw(f), layout=layout)[0],))
    parts.append(("stem", stem, (torch.rand(1, 3, h, w),)))
    with torch.no_grad():
        x = model.conv1.step(x, layout=layout)[0]
    for name, blk in model.bnecks():
        has_buf = blk.deep.conv_2 is not None
        args = (x, *( (state[f"{name}_deep_buf"],) if has_buf else ()), state[f"{name}_se_mean"], r)

        def run(*a: Tensor, blk: Any = blk, has_buf: bool = has_buf) -> tuple[Tensor, ...]:
            xb, rest = a[0], list(a[1:])
            buf = rest.pop(0) if has_buf else None
            y, nb, mean = blk.step(xb, buf, rest[0], rest[1], layout=layout)
            return (y, *((nb,) if nb is not None else ()), mean)

        parts.append((name, _Part(model, run), args))
        with torch.no_grad():
            x = run(*args)[0]

    def head(xh: Tensor, mean: Tensor, rh: Tensor) -> tuple[Tensor, ...]:
        from stexport.models._movinet_layers import running_mean

        y = model.conv7.step(xh, layout=layout)[0]
        m, new = running_mean(layout.spatial_mean(y), mean, rh, apart=layout.integer)
        return model._classify(m), new

    parts.append(("head", _Part(model, head), (x, state["head_mean"], r)))
    return parts


def _convert(module: nn.Module, args: tuple[Tensor, ...], path: Path) -> Path:
    import litert_torch

    from stexport.quiet import captured_output

    with captured_output(enabled=True):
        litert_torch.convert(module.eval(), args).export(str(path))
    return path


def _invoker(path: Path) -> tuple[Callable[[], None], Callable[[], None]]:
    """(invoke only, the signature runner with every input copied in and every output copied out)."""
    from stexport.targets._tflite import interpreter_class

    it = interpreter_class()(model_path=str(path), num_threads=1)
    runner = it.get_signature_runner()
    feeds = {k: np.zeros(d["shape"], d["dtype"]) for k, d in runner.get_input_details().items()}
    runner(**feeds)
    wrapper, index = runner._interpreter_wrapper, runner._subgraph_index
    return (lambda: wrapper.Invoke(index)), (lambda: runner(**feeds))


def _median_ms(fn: Callable[[], None], n: int) -> float:
    fn()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(ts))


def _page_faults_per_call(fn: Callable[[], None], n: int) -> float:
    """Minor page faults of this process per call of ``fn`` (``getrusage``; 0.0 where it is not available)."""
    try:
        import resource
    except ImportError:  # not on Windows
        return 0.0
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n


def per_op_type(path: Path, *, seconds: float = 4.0) -> dict[str, float] | None:
    """Share of samples per kernel group (`KERNEL_GROUPS`) while ``invoke()`` loops, from ``perf``; None without
    perf."""
    perf = shutil.which("perf")
    if perf is None:
        return None
    loop = ("import sys\nfrom stexport.benchmarks.budget import _invoker\ninv, _ = _invoker(sys.argv[1])\n"
            "print('ready', flush=True)\nwhile True:\n    inv()\n")
    worker = subprocess.Popen([sys.executable, "-c", loop, str(path)], stdout=subprocess.PIPE, text=True)
    try:  # perf attaches once the worker has loaded the model: only the invoke() loop is sampled
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != "ready":
            return None
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "perf.data"
            rec = subprocess.run([perf, "record", "-e", "cpu-clock", "-F", "4000", "-o", str(data), "-p",
                                  str(worker.pid), "--", "sleep", str(seconds)], capture_output=True, text=True)
            if rec.returncode != 0:
                return None
            rep = subprocess.run([perf, "report", "-i", str(data), "--no-children", "--sort", "symbol", "--stdio"],
                                 capture_output=True, text=True)
    finally:
        worker.kill()
        worker.wait()
    return kernel_group_shares(rep.stdout)


def kernel_group_shares(report: str) -> dict[str, float]:
    """``perf report --sort symbol --stdio`` text -> share of samples per `KERNEL_GROUPS` group, largest first."""
    shares: dict[str, float] = {}
    for line in report.splitlines():  # "  24.89%  [.] xnn_f32_gemm_minmax_ukernel_7x32__avx512f  -  -"
        m = re.match(r"\s*([\d.]+)%\s+\[[.k]\]\s+(\S+)", line)
        if m is None:
            continue
        share, sym = float(m.group(1)) / 100, m.group(2)
        group = next((g for key, g in KERNEL_GROUPS if key in sym), "other (Python, numpy, kernel)")
        shares[group] = shares.get(group, 0.0) + share
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def budget(name: str = "movinet_a0_stream", *, rounds: int = 7, reps: int = 30,
           out_dir: Path | None = RESULTS_DIR / "budget") -> dict[str, Any]:
    """Measure the per-frame budget of a MoViNet stream model's fp32 LiteRT step (see the module docstring)."""
    import stexport
    from stexport.models.movinet import MoViNetStream
    model = stexport.create_model(name)
    if not isinstance(model, MoViNetStream):
        raise ValueError(f"{name} is not a MoViNet stream model")
    model = model.with_step_layout("nhwc")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        whole_dir = stexport.export(name, target="tflite", out=root, verify=False, progress=lambda s: None)
        whole = next(whole_dir.glob("*.tflite"))
        timers = {"step": _invoker(whole)}
        for part, module, args in step_parts(model):
            timers[part] = _invoker(_convert(module, args, root / f"{part}.tflite"))
        ops = per_op_type(whole)
        ceiling_before = conv_ceiling(threads=1)
        samples: dict[str, list[float]] = {k: [] for k in timers}
        copies: list[float] = []
        for _ in range(rounds):  # interleaved: every part and the whole in each round
            for k, (invoke, _signature) in timers.items():
                samples[k].append(_median_ms(invoke, reps))
            copies.append(_median_ms(timers["step"][1], reps) - samples["step"][-1])
        faults = _page_faults_per_call(timers["step"][1], reps)
        ceiling_after = conv_ceiling(threads=1)
    med = {k: float(np.median(v)) for k, v in samples.items()}
    parts = {k: v for k, v in med.items() if k != "step"}
    result = {
        "model": name, "precision": "fp32", "runtime": "litert (XNNPACK), 1 thread, invoke()",
        "machine": {"cpu_model": cpu_model(), "load_avg": [round(x, 2) for x in os.getloadavg()],
                    "conv_ceiling_before": ceiling_before, "conv_ceiling_after": ceiling_after},
        "rounds": rounds, "reps_per_round": reps,
        "step_ms": med["step"], "parts_ms": parts, "sum_of_parts_ms": sum(parts.values()),
        "state_copies_ms": float(np.median(copies)), "state_copies_page_faults_per_step": faults,
        "op_type_share": ops,
    }
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        base = out_dir / f"{name}_fp32"
        base.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        _plot(result, base.with_suffix(".png"))
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = result["parts_ms"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    names = [*parts, "state copies"]
    vals = [*parts.values(), result["state_copies_ms"]]
    a.bar(range(len(names)), vals, color=["#1f77b4"] * len(parts) + ["#d62728"])
    a.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    a.set_ylabel("ms per frame (median, 1 thread)")
    a.set_title(f"{result['model']} LiteRT step {result['step_ms']:.2f} ms: per block "
                f"(sum {result['sum_of_parts_ms']:.2f} ms) + state copies", fontsize=9)
    ops = result.get("op_type_share") or {}
    if ops:
        items = [(k, v) for k, v in ops.items() if v >= 0.01]
        b.barh(range(len(items)), [v * result["step_ms"] for _, v in items], color="#2ca02c")
        b.set_yticks(range(len(items)), [k for k, _ in items], fontsize=8)
        b.invert_yaxis()
        b.set_xlabel("ms per frame (perf samples x step time)")
        b.set_title("per op type (perf)", fontsize=9)
    else:
        b.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stexport.benchmarks.budget", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="movinet_a0_stream")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "budget")
    args = p.parse_args(argv)
    res = budget(args.model, rounds=args.rounds, out_dir=args.out)
    print(f"{res['model']}: step {res['step_ms']:.3f} ms (invoke), state copies {res['state_copies_ms']:.3f} ms "
          f"({res['state_copies_page_faults_per_step']:.0f} page faults per step)")
    for k, v in res["parts_ms"].items():
        print(f"  {k:<8} {v:.3f} ms")
    for k, v in (res["op_type_share"] or {}).items():
        print(f"  {v:6.1%}  {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
