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


INT8_MANIFEST = {
    "schema_version": 1, "io": "int8", "model": {"name": "toy8", "num_classes": 3, "num_frames": 4, "streaming": True},
    "form": "stream", "target": "tflite", "artifact": {"file": "toy8.tflite", "bytes": 1},
    "preprocessing": {"size": [2, 2], "value_range": [0.0, 1.0], "mean": [0, 0, 0], "std": [1, 1, 1],
                      "tensor_layout": "NHWC uint8", "folded_into_graph": True},
    "inputs": [{"name": "frame", "shape": [1, 2, 2, 3], "dtype": "uint8", "layout": "NHWC",
                "quantization": {"scale": 1.0, "zero_point": 0}},
               {"name": "buf", "shape": [1, 2, 2, 2], "dtype": "int8", "init": "zero_point", "init_value": -117,
                "quantization": {"scale": 0.0336, "zero_point": -117}},
               {"name": "mean", "shape": [1, 2], "dtype": "float32", "init": "zeros"}],
    "outputs": [{"name": "logits", "shape": [1, 3], "dtype": "float32"},
                {"name": "buf_out", "shape": [1, 2, 2, 2], "dtype": "int8",
                 "quantization": {"scale": 0.0336, "zero_point": -117}},
                {"name": "mean_out", "shape": [1, 2], "dtype": "float32"}],
    "states": [{"name": "buf", "output": "buf_out", "shape": [1, 2, 2, 2], "dtype": "int8", "init": "zero_point",
                "kind": "buffer", "init_value": -117, "quantization": {"scale": 0.0336, "zero_point": -117}},
               {"name": "mean", "output": "mean_out", "shape": [1, 2], "dtype": "float32", "init": "zeros",
                "kind": "accumulator"}],
    "input_order": ["frame", "buf", "mean"], "output_order": ["logits", "buf_out", "mean_out"],
}

INT8_SCRIPT = """
import * as core from './core.js';
const raw = %s;
const m = core.parseManifest(raw);
const fed = [];
const run = async (feeds) => { fed.push(feeds); return { logits: new Float32Array([0, 1, 2]),
  buf_out: Int8Array.from(feeds.buf, (v) => v + 1), mean_out: Float32Array.from(feeds.mean, (v) => v + 0.5) }; };
const s = new core.StreamSession(m, run, () => 0);
const r = { rawFrame: m.rawFrame, start: Array.from(s.states.buf), startType: s.states.buf.constructor.name };
const rgba = Uint8Array.from({ length: 16 }, (_, i) => 200 + i);  // RGBA pixels at the model size
const frame = core.frameInput(rgba, m, 4);
r.frame = { type: frame.constructor.name, values: Array.from(frame) };
for (let i = 0; i < 3; i++) await s.step(frame);
r.fedFrameType = fed[0].frame.constructor.name;
r.buf = Array.from(s.states.buf);
r.mean = Array.from(s.states.mean);
r.deq = Array.from(core.dequantize(Int8Array.of(-117, -116), m.states[0].quantization));
try { await s.step(new Float32Array(12)); r.float = 'accepted'; } catch (e) { r.float = [e.name, e.message]; }
try { await s.stepFeeds({ frame: new Uint8Array(11) }); r.size = 'accepted'; }
catch (e) { r.size = [e.name, e.message]; }
r.callsAfterRefusals = fed.length;
s.reset();
r.reset = Array.from(s.states.buf);
const broken = JSON.parse(JSON.stringify(raw));
broken.states[0].init_value = 0;
try { core.parseManifest(broken); r.broken = 'accepted'; } catch (e) { r.broken = e.message; }
console.log(JSON.stringify(r));
"""


def test_core_js_integer_boundary() -> None:
    """An integer-boundary manifest: core.js feeds RGB bytes (RGBA dropped to RGB, no float preprocessing), starts
    the int8 state at its zero point (-117), carries Int8Array outputs, refuses float frames, and resets to -117."""
    node = ds.need(ds.node)
    p = subprocess.run([node, "--input-type=module", "-e", INT8_SCRIPT % json.dumps(INT8_MANIFEST)], cwd=ds.WEB,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["rawFrame"] and r["startType"] == "Int8Array" and r["start"] == [-117] * 8
    rgb = [200 + i for i in range(16) if i % 4 != 3]
    assert r["frame"] == {"type": "Uint8Array", "values": rgb} and r["fedFrameType"] == "Uint8Array"
    assert r["buf"] == [-114] * 8 and r["mean"] == [1.5, 1.5]
    assert r["deq"][0] == 0 and abs(r["deq"][1] - 0.0336) < 1e-7
    assert r["float"][0] == "InputError" and "uint8 [1, 2, 2, 3] (12 RGB bytes)" in r["float"][1]
    assert r["size"][0] == "InputError" and "frame has 11 values" in r["size"][1]
    assert r["callsAfterRefusals"] == 3 and r["reset"] == [-117] * 8
    assert "init_value is not its zero point" in r["broken"]
