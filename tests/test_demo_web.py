"""web_demo/: the page runs real ONNX bundles (onnxruntime-web, wasm) and TFLite bundles (LiteRT.js, wasm with
XNNPACK) in headless Chromium on frames of a real video and must give the same per-frame logits as the artifact's
own Python runtime (onnxruntime, LiteRT), state carried frame to frame."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import demo_support as ds
import numpy as np
import pytest

TOL = 1e-4  # the bar for per-frame logits, web vs Python
START_S = 1.0  # skip the video's first second


def _manifest(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / "manifest.json").read_text())


def _preprocess(frames: np.ndarray, pre: dict[str, Any]) -> np.ndarray:
    """RGB uint8 [T, H, W, 3] -> float32 [T, 3, H, W], the manifest's formula (float32, exporter's order)."""
    lo, hi = pre["value_range"]
    u = frames.astype(np.float32) / np.float32(255.0) * np.float32(hi - lo) + np.float32(lo)
    x = (u - np.asarray(pre["mean"], np.float32)) / np.asarray(pre["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _pack(window: list[np.ndarray], layout: str) -> np.ndarray:
    """T frames [3, H, W] (oldest first) -> [1, C', H, W] in the clip layout."""
    clip = np.stack(window, 1)  # [3, T, H, W]
    if layout == "N(T*C)HW":
        clip = clip.transpose(1, 0, 2, 3)
    return np.ascontiguousarray(clip.reshape(1, -1, *clip.shape[2:]))


def python_reference(bundle: Path, frames: np.ndarray) -> np.ndarray:
    """Per-frame logits [T, K] from the artifact's Python runtime (onnxruntime on the CPU, or LiteRT's interpreter
    with XNNPACK; 1 thread) with the app's loop: states carried, or the clip ring."""
    from stexport.streaming import load_bundle_runner

    m = _manifest(bundle)
    runner = load_bundle_runner(bundle, threads=1)[0]
    x = _preprocess(frames, m["preprocessing"])
    state = {s["name"]: np.zeros(s["shape"], np.float32) for s in m["states"]}
    t_frames = m["model"]["num_frames"]
    window = [np.zeros_like(x[0]) for _ in range(t_frames)]
    out = []
    for t in range(len(x)):
        if m["form"] == "clip":
            window = [*window[1:], x[t]]
            feeds = {"clip": _pack(window, m["inputs"][0]["layout"]).reshape(m["inputs"][0]["shape"])}
        else:
            feeds = {"frame": x[t:t + 1], **state}
        res = runner.run(feeds)
        state = {s["name"]: res[s["output"]] for s in m["states"]}
        out.append(res["logits"][0])
    return np.asarray(out, np.float64)


class Browser:
    """A local server (web_demo/ plus mounted folders) and headless Debian Chromium driven by Playwright."""

    def __init__(self, tmp: Path) -> None:
        sys.path.insert(0, str(ds.WEB))
        import serve

        self.mounts: dict[str, Path] = {}  # the server reads this dict: folders mounted later are served too
        self.server, self.base = serve.serve_in_thread(mounts=self.mounts, quiet=True)
        ds.pip_module("playwright")
        from playwright.sync_api import sync_playwright

        self.pw = sync_playwright().start()
        self.context = self.pw.chromium.launch_persistent_context(
            str(tmp / "chromium-profile"), executable_path=ds.chromium(), headless=True, args=ds.CHROMIUM_FLAGS,
            viewport={"width": 1000, "height": 640}, device_scale_factor=1)
        self.errors: list[str] = []

    def mount(self, prefix: str, folder: Path) -> str:
        self.mounts[prefix] = folder
        return prefix

    def open(self, bundle_url: str) -> Any:
        page = self.context.new_page()
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.goto(f"{self.base}index.html?bundle={bundle_url}&threads=1")
        page.wait_for_function("window.stexportDemo && window.stexportDemo.ready", timeout=30_000)
        info = page.evaluate("window.stexportDemo.loaded")
        return page, info

    def close(self) -> None:
        self.context.close()
        self.pw.stop()
        self.server.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    ds.need(ds.chromium)
    ds.need(ds.pip_module, "playwright")
    ds.need(ds.web_node_modules)
    b = Browser(tmp_path_factory.mktemp("web"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def video() -> Path:
    ds.need(ds.ffmpeg)
    return ds.need(ds.sample_video)


def _frames_for(bundle: Path, video: Path, count: int, tmp: Path) -> tuple[np.ndarray, Path]:
    pre = _manifest(bundle)["preprocessing"]
    h, w = pre["size"]
    m = re.search(r"shorter side to (\d+)", pre.get("resize", ""))
    frames = ds.decode_frames(video, height=h, width=w, count=count, stride=int(pre.get("frame_stride", 1)),
                              start=START_S, resize_shorter=int(m.group(1)) if m else None)
    (tmp / "frames.rgb").write_bytes(frames.tobytes())
    return frames, tmp


def _run_page(browser: Browser, bundle: Path, frames: np.ndarray, folder: Path, key: str) -> tuple[Any, dict]:
    b = browser.mount(f"/b-{key}/", bundle)
    f = browser.mount(f"/f-{key}/", folder)
    page, info = browser.open(b)
    n, h, w, _ = frames.shape
    res = page.evaluate(f"window.stexportDemo.runRawFrames('{f}frames.rgb', {{count: {n}, width: {w}, height: {h}}})")
    return page, {**res, "info": info}


def _save_small_png(src: Path, dst: Path) -> None:
    """A 256-colour copy of the screenshot (small enough to commit); a plain copy without Pillow."""
    try:
        from PIL import Image
    except ImportError:
        shutil.copy(src, dst)
        return
    Image.open(src).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(dst, optimize=True)


RUNTIME = {"onnx": ("onnxruntime-web", "onnxruntime"), "tflite": ("LiteRT.js", "LiteRT")}  # page, Python


def _check_parity(web: list[list[float]], ref: np.ndarray, label: str, target: str = "onnx") -> float:
    page_rt, py_rt = RUNTIME[target]
    got = np.asarray(web, np.float64)
    assert got.shape == ref.shape, f"{label}: page gave {got.shape}, {py_rt} {ref.shape}"
    err = float(np.max(np.abs(got - ref)))
    print(f"{label}: {len(ref)} frames, {page_rt} vs {py_rt} max abs err {err:.3g}, "
          f"logit spread across frames {float(ref.std(0).mean()):.3g}")
    assert err <= TOL, f"{label}: {page_rt} logits differ from {py_rt} by {err:.3g} > {TOL}"
    return err


def _stream_video_case(browser: Browser, video: Path, tmp_path: Path, target: str) -> Any:
    """The real stream model's ``target`` bundle on 24 video frames in the page, per-frame logits against the
    artifact's Python runtime; the page picked the runtime from the manifest. Returns the page."""
    bundle = ds.stream_bundle(target)
    m = _manifest(bundle)
    frames, folder = _frames_for(bundle, video, 24, tmp_path)
    page, res = _run_page(browser, bundle, frames, folder, f"stream-{target}")
    info = res["info"]
    assert info["target"] == target and info["runtime"].startswith(RUNTIME[target][0]), info
    assert page.locator("#runtime").inner_text() == info["runtime"]
    assert info["states"] == [s["name"] for s in m["states"]] and m["states"], "stream bundle has states"
    assert info["inputs"] == m["input_order"] and info["outputs"] == m["output_order"], info
    ref = python_reference(bundle, frames)
    flipped = python_reference(bundle, np.ascontiguousarray(frames[:, :, ::-1]))
    sensitivity = float(np.max(np.abs(flipped - ref)))
    print(f"mirrored frames move the logits by up to {sensitivity:.3g}")
    assert sensitivity > 10 * TOL, "logits hardly depend on the frames: parity would prove nothing"
    _check_parity(res["logits"], ref, f"{m['model']['name']} ({target})", target)
    assert page.locator("#top5 li").count() == 5
    assert page.locator("#frame-no").inner_text() == str(len(frames))
    labels = (bundle / "labels.txt").read_text().splitlines()
    top = page.locator("#top5 li .label").all_inner_texts()
    assert all(t in labels for t in top)
    return page


def test_stream_model_matches_onnxruntime_on_video(browser: Browser, video: Path, tmp_path: Path) -> None:
    page = _stream_video_case(browser, video, tmp_path, "onnx")
    shot = tmp_path / "screenshot.png"
    page.screenshot(path=str(shot))
    if os.environ.get("STX_DEMO_SCREENSHOT") or not (ds.WEB / "screenshot.png").is_file():
        _save_small_png(shot, ds.WEB / "screenshot.png")
    assert not browser.errors, browser.errors
    page.close()


def test_clip_model_ring_buffer_matches_onnxruntime(browser: Browser, video: Path, tmp_path: Path) -> None:
    bundle = ds.clip_ring_bundle("onnx")
    m = _manifest(bundle)
    assert m["form"] == "stream" and [s["name"] for s in m["states"]] == ["frames"]
    t = m["model"]["num_frames"]
    frames, folder = _frames_for(bundle, video, t + 2, tmp_path)  # past one full window: the ring wraps
    page, res = _run_page(browser, bundle, frames, folder, "ring")
    ref = python_reference(bundle, frames)
    _check_parity(res["logits"], ref, f"{m['model']['name']} (ring buffer)")
    assert not browser.errors, browser.errors
    page.close()


def test_clip_form_bundle_uses_the_pages_ring(browser: Browser, video: Path, tmp_path: Path) -> None:
    bundle = ds.tiny_clip_form_bundle("onnx")
    m = _manifest(bundle)
    assert m["form"] == "clip" and m["inputs"][0]["name"] == "clip"
    frames, folder = _frames_for(bundle, video, m["model"]["num_frames"] + 3, tmp_path)
    page, res = _run_page(browser, bundle, frames, folder, "clipform")
    _check_parity(res["logits"], python_reference(bundle, frames), "tinyclip (clip form, page ring)")
    page.close()


def test_tflite_stream_model_matches_litert_on_video(browser: Browser, video: Path, tmp_path: Path) -> None:
    """The same real stream model exported to TFLite, run by LiteRT.js in the page (tensors by signature name,
    the signature from the manifest) against LiteRT in Python."""
    page = _stream_video_case(browser, video, tmp_path, "tflite")
    assert not browser.errors, browser.errors
    page.close()


def _motion7_case(browser: Browser, tmp_path: Path, target: str) -> None:
    """The shipped, trained motion7 MoViNet exported to ``target``, in the page: on one test clip of each class (a
    fresh stream each) the page's per-frame logits match the artifact's Python runtime, and its last-frame top-1
    names the clip's motion."""
    import stexport
    from stexport import motion

    bundle = stexport.export("movinet_a0_stream_motion7", target=target, out=tmp_path / "out",
                             progress=lambda s: None)
    labels = (bundle / "labels.txt").read_text().splitlines()
    assert labels == list(motion.CLASSES)
    named = []
    for k in range(len(motion.CLASSES)):
        frames, label = motion.motion_clip(k)
        folder = tmp_path / f"clip{k}"
        folder.mkdir()
        (folder / "frames.rgb").write_bytes(np.ascontiguousarray(frames).tobytes())
        page, res = _run_page(browser, bundle, frames, folder, f"motion{k}-{target}")
        assert res["info"]["target"] == target
        _check_parity(res["logits"], python_reference(bundle, frames), f"motion7 test clip {k} ({labels[label]})",
                      target)
        named.append(labels[int(np.argmax(res["logits"][-1]))] == labels[label])
        assert page.locator("#top5 li .label").first.inner_text() in labels
        page.close()
    print(f"the page's top-1 ({RUNTIME[target][0]}) names the motion in {sum(named)} of {len(named)} clips")
    assert sum(named) >= len(named) - 1, named  # the model scores 99.4% on the test split
    assert not browser.errors, browser.errors


def test_trained_motion7_bundle_recognises_motion(browser: Browser, tmp_path: Path) -> None:
    _motion7_case(browser, tmp_path, "onnx")


def test_tflite_motion7_bundle_recognises_motion_in_litert(browser: Browser, tmp_path: Path) -> None:
    _motion7_case(browser, tmp_path, "tflite")


def test_video_file_path_streams_frames(browser: Browser, video: Path) -> None:
    """The people's path: an HTMLVideoElement seeked frame by frame, drawn to a canvas, cropped and normalised."""
    bundle = ds.stream_bundle("onnx")
    b = browser.mount("/b-video/", bundle)
    v = browser.mount("/video/", video.parent)
    page, _ = browser.open(b)
    can = page.evaluate("document.createElement('video').canPlayType('video/mp4; codecs=\"avc1.4D401F\"')")
    if not can:
        pytest.skip("this Chromium build cannot decode H.264; the raw-frame tests cover the model path")
    logits = page.evaluate(f"window.stexportDemo.playVideo('{v}{video.name}', {{maxFrames: 3, start: {START_S}}})")
    assert len(logits) == 3 and all(np.isfinite(np.asarray(x)).all() for x in logits)
    assert np.ptp(np.asarray(logits), axis=0).max() > 0, "different frames should give different logits"
    assert page.locator("#frame-no").inner_text() == "3"
    assert "video 1280×720" in page.locator("#source-line").inner_text()
    page.locator("#reset").click()
    assert page.locator("#top5 li").count() == 0
    page.close()


def _node_script(script: str, bundles: list[Path]) -> None:
    """Run web_demo/test/``script`` in node over ``bundles``: it prints one "ok" line per bundle."""
    node = ds.need(ds.node)
    p = subprocess.run([node, str(ds.WEB / "test" / script), *map(str, bundles)], capture_output=True, text=True,
                       timeout=120, cwd=ds.WEB)
    print(p.stdout[-2000:])
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stdout.count("ok ") == len(bundles)


def test_core_js_replays_golden_in_node(tmp_path: Path) -> None:
    """core.js without a browser: golden.json frames through normalize() match the exporter's input summaries
    exactly, each `<state>_out` comes back as `<state>`, and top-5 labels match."""
    _node_script("golden_replay.mjs", [ds.stream_bundle("onnx"), ds.clip_ring_bundle("onnx"),
                                       ds.tiny_clip_form_bundle("onnx"),
                                       ds.int8_io_bundle()])  # integer boundary: uint8 frames, int8 state


def test_tflite_golden_replays_and_litert_adapter_in_node() -> None:
    """A real TFLite stream bundle without a browser: its golden.json through core.js, and runtimes.js's LiteRT.js
    adapter with a stub signature that lists the tensors in another order than the manifest (each goes by name,
    the state is carried, every tensor is deleted, a signature with other names or shapes is refused); the ONNX
    bundle picks onnxruntime-web."""
    tfl = ds.stream_bundle("tflite")
    _node_script("golden_replay.mjs", [tfl])
    _node_script("runtimes_check.mjs", [tfl, ds.stream_bundle("onnx")])


def test_runtime_keys_exist_in_real_onnx_and_tflite_manifests() -> None:
    """Every manifest key runtimes.js reads, per target, is in a real bundle of that target (LiteRT.js: the
    signature name comes from ``tflite.signature``)."""
    p = subprocess.run([ds.need(ds.node), "--input-type=module", "-e",
                        "import('./runtimes.js').then(r => console.log(JSON.stringify(r.RUNTIME_MANIFEST_KEYS)))"],
                       capture_output=True, text=True, cwd=ds.WEB, timeout=60)
    assert p.returncode == 0, p.stderr
    used = json.loads(p.stdout)
    assert set(used) == {"onnx", "tflite"}
    for target, keys in used.items():
        m = _manifest(ds.stream_bundle(target))
        assert m["target"] == target
        assert set(keys) <= ds.manifest_keys(m), f"{target}: runtimes.js reads {set(keys) - ds.manifest_keys(m)}"
    assert _manifest(ds.stream_bundle("tflite"))["tflite"]["signature"] == "serving_default"


def test_names_used_by_the_page_exist_in_a_real_manifest() -> None:
    bundle = ds.stream_bundle("onnx")
    m = _manifest(bundle)
    keys: set[str] = set()

    def walk(o: object) -> None:
        if isinstance(o, dict):
            keys.update(o)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(m)
    p = subprocess.run([ds.need(ds.node), "--input-type=module", "-e",
                        "import('./core.js').then(c => console.log(JSON.stringify({keys: c.MANIFEST_KEYS, "
                        "names: c.TENSOR_NAMES})))"], capture_output=True, text=True, cwd=ds.WEB, timeout=60)
    if p.returncode != 0:
        pytest.fail(p.stderr)
    used = json.loads(p.stdout)
    assert set(used["keys"]) <= keys, f"core.js reads keys the manifest lacks: {set(used['keys']) - keys}"
    names = used["names"]
    assert names["frame"] in m["input_order"] and names["logits"] in m["output_order"]
    assert all(s["output"] == s["name"] + names["stateOutputSuffix"] for s in m["states"])
    app = (ds.WEB / "app.js").read_text() + (ds.WEB / "core.js").read_text()
    hard_coded = [s["name"] for s in m["states"] if f'"{s["name"]}"' in app or f"'{s['name']}'" in app]
    assert not hard_coded, f"the page hard-codes state names {hard_coded}; they must come from the manifest"


def test_package_files_are_consistent() -> None:
    pkg = json.loads((ds.WEB / "package.json").read_text())
    lock = json.loads((ds.WEB / "package-lock.json").read_text())
    for dep in ("onnxruntime-web", "@litertjs/core"):  # pinned, and the lock agrees
        assert pkg["dependencies"][dep] == lock["packages"][f"node_modules/{dep}"]["version"], dep
    assert "node_modules" in (ds.WEB / ".gitignore").read_text()
