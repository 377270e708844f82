"""The demo cores refuse bad input the way `stexport.open_stream` does: a frame of the wrong size or type, a wrong
name, or a non-finite value raises an input error saying what was expected, and the carried state is unchanged.
web_demo/core.js runs here in node; the Kotlin core's checks run in its JUnit suite (test_demo_android.py,
``InputCheckTest``); the Swift core's XCTest cases (``testRefuses*``) need Xcode, so here they are parsed and the
checks they test are required to exist."""

from __future__ import annotations

import json
import subprocess

import demo_support as ds

TOY_MANIFEST = {
    "schema_version": 1, "model": {"name": "toy", "num_classes": 3, "num_frames": 4, "streaming": True},
    "form": "stream", "target": "onnx", "artifact": {"file": "toy.onnx", "bytes": 1},
    "preprocessing": {"size": [2, 2], "value_range": [0.0, 1.0], "mean": [0, 0, 0], "std": [1, 1, 1]},
    "inputs": [{"name": "frame", "shape": [1, 3, 2, 2], "dtype": "float32"},
               {"name": "buf", "shape": [1, 2, 2, 2], "dtype": "float32"}],
    "outputs": [{"name": "logits", "shape": [1, 3], "dtype": "float32"},
                {"name": "buf_out", "shape": [1, 2, 2, 2], "dtype": "float32"}],
    "states": [{"name": "buf", "output": "buf_out", "shape": [1, 2, 2, 2]}],
    "input_order": ["frame", "buf"], "output_order": ["logits", "buf_out"],
}

SCRIPT = """
import * as core from './core.js';
const m = core.parseManifest(%s);
let calls = 0;
const run = async (feeds) => { calls += 1; return { logits: new Float32Array([0, 1, 2]),
  buf_out: Float32Array.from(feeds.buf, (v) => v + 1) }; };
const s = new core.StreamSession(m, run, () => 0);
const frame = () => new Float32Array(12).fill(0.5);
const results = {};
async function refused(key, fn) {
  const before = Array.from(s.states.buf);
  const c = calls;
  try { await fn(); results[key] = 'accepted'; }
  catch (e) { results[key] = { type: e.constructor.name, message: e.message,
    kept: Array.from(s.states.buf).join() === before.join() && calls === c }; }
}
await s.step(frame());
await refused('size', () => s.step(new Float32Array(11)));
await refused('dtype', () => s.step(new Float64Array(12).fill(0.5)));
await refused('array', () => s.step(Array(12).fill(0.5)));
for (const bad of [NaN, Infinity, -Infinity]) {
  const f = frame(); f[5] = bad;
  await refused('nonfinite ' + bad, () => s.step(f));
}
await refused('name', () => s.stepFeeds({ image: frame() }));
await refused('extra', () => s.stepFeeds({ frame: frame(), buf: new Float32Array(8) }));
const ok = await s.stepFeeds({ frame: frame() });
results.after = { step: ok.step, buf: Array.from(s.states.buf) };
s.reset();
results.reset = Array.from(s.states.buf);
console.log(JSON.stringify(results));
"""


def test_core_js_refuses_bad_frames_and_keeps_the_state() -> None:
    node = ds.need(ds.node)
    p = subprocess.run([node, "--input-type=module", "-e", SCRIPT % json.dumps(TOY_MANIFEST)], cwd=ds.WEB,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    want = "float32 [1, 3, 2, 2] (12 values)"
    for key in ("size", "dtype", "array", "nonfinite NaN", "nonfinite Infinity", "nonfinite -Infinity", "name",
                "extra"):
        got = r[key]
        assert got != "accepted", f"core.js accepted a bad {key}"
        assert got["type"] == "InputError" and got["kept"], (key, got)
        assert want in got["message"] or "[1, 3, 2, 2]" in got["message"], (key, got["message"])
        assert "state is unchanged" in got["message"]
    assert "frame has 11 values" in r["size"]["message"] and "Float64Array" in r["dtype"]["message"]
    assert "got inputs [image]" in r["name"]["message"] and "got inputs [buf, frame]" in r["extra"]["message"]
    assert r["after"] == {"step": 1, "buf": [2.0] * 8}  # the refused feeds did not advance the stream
    assert r["reset"] == [0.0] * 8


def test_swift_core_checks_its_input() -> None:
    src = (ds.IOS / "Sources" / "StexportCore" / "StreamSession.swift").read_text()
    tests = (ds.IOS / "Tests" / "StexportCoreTests" / "StexportCoreTests.swift").read_text()
    assert "try checkFrame(frame)" in src and "isFinite" in src and "public func step(feeds:" in src
    for name in ("testRefusesAFrameOfTheWrongSize", "testRefusesANonFiniteFrameAndKeepsTheState",
                 "testRefusesWrongNamesAndDtypes"):
        assert f"func {name}()" in tests
    files = [ds.IOS / "Sources" / "StexportCore" / "StreamSession.swift",
             ds.IOS / "Tests" / "StexportCoreTests" / "StexportCoreTests.swift"]
    trees = ds.parse_files("tree_sitter_swift", files)
    problems = {f.name: ds.syntax_problems(t, f.read_bytes()) for f, t in trees.items()}
    assert not any(problems.values()), problems


def test_kotlin_core_checks_its_input() -> None:
    core = ds.ANDROID / "core" / "src"
    src = (core / "main" / "kotlin" / "org" / "stexport" / "demo" / "core" / "StreamSession.kt").read_text()
    tests = (core / "test" / "kotlin" / "org" / "stexport" / "demo" / "core" / "CoreUnitTest.kt").read_text()
    assert "checkFrame(frame)" in src and "isFinite()" in src and "fun stepFeeds(" in src
    assert "class InputCheckTest" in tests  # run by test_demo_android.py::test_core_junit_replays_real_bundles
