"""Facts about the machine a result was measured on, and its measured fp32 ceilings: a torch matmul, and XNNPACK's
throughput on one large 3x3 conv (the core's limit for conv-shaped work: torch's GEMM understates it ~2x).

Every result row carries these, so a number is never read without the machine (and the load on it) it came from.
"""

from __future__ import annotations

import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DISTS = ("matplotlib", "tqdm", "psutil")
# thread-pool settings that change what a thread count means (e.g. OpenMP spin-waiting on a busy machine)
THREAD_ENV = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME")


def _cpuinfo() -> list[dict[str, str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    cpus = []
    for block in text.strip().split("\n\n"):
        entry = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            entry[key.strip()] = value.strip()
        cpus.append(entry)
    return cpus


def cpu_model() -> str:
    for cpu in _cpuinfo():
        if cpu.get("model name"):
            return cpu["model name"]
    return platform.processor() or platform.machine()


#: CPU features that decide which kernels XNNPACK, ONNX Runtime and PyTorch run (x86 ``flags`` / Arm ``Features``
#: in /proc/cpuinfo). int8 speed hangs on them: on an Intel Xeon with AMX, XNNPACK runs small int8 GEMMs in AMX
#: tiles (16x64), slower at a stream step's shapes than its AVX512-VNNI kernels, so int8 / fp32 ratios differ
#: between machines far more than fp32 times do.
KERNEL_ISA = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
              "amx_int8", "amx_bf16", "asimd", "asimddp", "asimdhp", "i8mm", "sve", "sve2", "bf16")


def kernel_isa() -> list[str]:
    """The `KERNEL_ISA` features this CPU reports, in that order ([] where /proc/cpuinfo has no flags)."""
    cpus = _cpuinfo()
    have = set((cpus[0].get("flags") or cpus[0].get("Features") or "").split()) if cpus else set()
    return [f for f in KERNEL_ISA if f in have]


def physical_cores() -> int | None:
    cores = {(c.get("physical id", "0"), c.get("core id")) for c in _cpuinfo() if "core id" in c}
    return len(cores) or None


def _memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def versions() -> dict[str, str | None]:
    """Python, stexport, torch, every converter/runtime and the benchmark's own plotting libraries."""
    from stexport.manifest import tool_versions

    out = dict(tool_versions())
    for dist in BENCH_DISTS:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def machine_facts(*, threads: int, matmul: dict[str, Any], conv: dict[str, Any] | None = None) -> dict[str, Any]:
    """CPU model, cores, the thread count used, load at measurement time, library versions, matmul peak and conv
    ceiling."""
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = None
    return {
        "cpu_model": cpu_model(),
        "kernel_isa": kernel_isa(),
        "logical_cores": os.cpu_count() or 0,
        "physical_cores": physical_cores(),
        "affinity_cores": affinity,
        "threads": threads,
        "load_avg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "memory_bytes": _memory_bytes(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "matmul_peak": matmul,
        **({"conv_ceiling": conv} if conv else {}),
        "versions": versions(),
        "env": {k: os.environ.get(k) for k in THREAD_ENV},
    }


def matmul_peak(*, threads: int, size: int = 2048, reps: int = 5) -> dict[str, Any]:
    """fp32 ``[size, size] @ [size, size]`` in PyTorch at ``threads`` threads: best and median GFLOP/s over
    ``reps`` timed runs after one warm-up (2 * size**3 FLOPs each)."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(size, size, generator=g)
        b = torch.randn(size, size, generator=g)
        out = torch.empty(size, size)
        torch.matmul(a, b, out=out)
        rates = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.matmul(a, b, out=out)
            rates.append(2.0 * size**3 / (time.perf_counter() - t0) / 1e9)
    finally:
        torch.set_num_threads(prev)
    return {"size": size, "threads": threads, "reps": reps, "gflops_best": round(max(rates), 2),
            "gflops_median": round(float(np.median(rates)), 2)}


def merge_peaks(*runs: dict[str, Any]) -> dict[str, Any]:
    """Matmul peaks measured before and after a timing block, as one: best of all, median of the medians."""
    return {"size": runs[0]["size"], "threads": runs[0]["threads"], "reps": sum(r["reps"] for r in runs),
            "gflops_best": max(r["gflops_best"] for r in runs),
            "gflops_median": round(float(np.median([r["gflops_median"] for r in runs])), 2)}


#: the ceiling's conv: Conv2d(256, 256, 3x3, padding 1) over [1, 256, 56, 56] (2 * 256 * 256 * 9 * 56 * 56 FLOPs)
CONV_SHAPE = (256, 56)
_conv_model: dict[str, Path] = {}


def _conv_tflite() -> Path:
    """The ceiling's conv as a .tflite (litert-torch), converted once per process."""
    if "path" not in _conv_model:
        import tempfile

        import litert_torch
        import torch

        from stexport.quiet import captured_output

        c, hw = CONV_SHAPE
        path = Path(tempfile.mkdtemp(prefix="stexport-ceiling-")) / "conv.tflite"
        with captured_output(enabled=True):
            litert_torch.convert(torch.nn.Conv2d(c, c, 3, padding=1).eval(), (torch.zeros(1, c, hw, hw),)).export(
                str(path))
        _conv_model["path"] = path
    return _conv_model["path"]


def conv_ceiling(*, threads: int, reps: int = 20, rounds: int = 3) -> dict[str, Any] | None:
    """XNNPACK's fp32 GFLOP/s on the `CONV_SHAPE` conv in LiteRT at ``threads``: best and median over ``rounds``
    medians of ``reps`` runs. None without the tflite extra (then efficiencies use the matmul peak)."""
    try:
        from stexport.targets._tflite import interpreter_class

        path = _conv_tflite()
    except ImportError:
        return None
    it = interpreter_class()(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    d = it.get_input_details()[0]
    it.set_tensor(d["index"], np.random.default_rng(0).standard_normal(d["shape"]).astype(np.float32))
    c, hw = CONV_SHAPE
    flops = 2.0 * c * c * 9 * hw * hw
    it.invoke()
    rates = []
    for _ in range(rounds):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            it.invoke()
            times.append(time.perf_counter() - t0)
        rates.append(flops / float(np.median(times)) / 1e9)
    return {"op": f"conv2d {c}->{c} 3x3 over {hw}x{hw}", "runtime": "litert xnnpack", "threads": threads,
            "gflops_best": round(max(rates), 2), "gflops_median": round(float(np.median(rates)), 2)}


def merge_ceilings(*runs: dict[str, Any] | None) -> dict[str, Any] | None:
    """Conv ceilings measured before and after a timing block, as one (best of all, median of medians)."""
    got = [r for r in runs if r]
    if not got:
        return None
    return {**got[0], "gflops_best": max(r["gflops_best"] for r in got),
            "gflops_median": round(float(np.median([r["gflops_median"] for r in got])), 2)}
