// Replays the golden.json of exported bundles through core.js with a stub runtime that serves the recorded
// logits: checks the preprocessing against the exporter's input summaries, that every `<state>_out` comes back
// as `<state>` on the next step (states start at their init: zero, or an int8 state's zero point), and the top-5
// label mapping. An integer-boundary bundle (uint8 frame) is fed the golden RGB bytes as they are (frameInput).
// Usage: node test/golden_replay.mjs BUNDLE_DIR [BUNDLE_DIR ...]   (prints "ok <model>" per bundle)
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { eachBundle } from "./each_bundle.mjs";
import { DTYPE_ARRAYS, frameInput, parseLabels, parseManifest, StreamSession, TENSOR_NAMES, topK } from "../core.js";

const TOL = 1e-6;

function fail(msg) {
  throw new Error(msg);
}

function checkSummary(what, data, s) {
  const size = s.shape.reduce((a, b) => a * b, 1);
  if (data.length !== size) fail(`${what}: ${data.length} values, summary says ${size}`);
  let sum = 0;
  let absMax = 0;
  for (const v of data) {
    sum += v;
    absMax = Math.max(absMax, Math.abs(v));
  }
  if (Math.abs(sum - s.sum) > 1e-9 * size + 1e-9 * Math.abs(s.sum)) fail(`${what}: sum ${sum} != ${s.sum}`);
  if (Math.abs(absMax - s.abs_max) > TOL) fail(`${what}: abs_max ${absMax} != ${s.abs_max}`);
  s.samples.index.forEach((i, k) => {
    if (Math.abs(data[i] - s.samples.values[k]) > TOL) fail(`${what}: [${i}] ${data[i]} != ${s.samples.values[k]}`);
  });
}

async function replay(dir) {
  const raw = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
  const golden = JSON.parse(readFileSync(join(dir, "golden.json"), "utf8"));
  const labels = parseLabels(readFileSync(join(dir, "labels.txt"), "utf8"));
  const m = parseManifest(raw);
  const perStep = golden.frames_per_step;
  let call = 0;
  let served = {};
  let checked = 0;
  const runtime = async (feeds) => {
    const names = Object.keys(feeds).sort().join();
    if (names !== [...m.inputOrder].sort().join()) fail(`inputs ${names} != ${m.inputOrder}`);
    const g = golden.steps[Math.floor(call / perStep)];
    const complete = (call + 1) % perStep === 0;
    if (g && complete && m.rawFrame) { // the graph preprocesses: the frame is the golden bytes themselves
      const want = Buffer.from(g.frames_u8_b64[perStep - 1], "base64");
      const got = feeds[TENSOR_NAMES.frame];
      if (!(got instanceof Uint8Array) || Buffer.compare(Buffer.from(got), want) !== 0) fail("frame != golden bytes");
      checked += 1;
    } else if (g && complete) {
      for (const [name, s] of Object.entries(g.input_summary)) {
        checkSummary(`step ${Math.floor(call / perStep)} ${name}`, feeds[name], s);
        checked += 1;
      }
    }
    m.states.forEach((s) => {
      const got = feeds[s.name];
      if (call === 0) {
        if (!(got instanceof DTYPE_ARRAYS[s.dtype])) fail(`state ${s.name} is not ${s.dtype}`);
        if (got.some((v) => v !== s.initValue)) fail(`state ${s.name} does not start at ${s.initValue}`);
      } else if (got !== served[s.output]) {
        fail(`state ${s.name} is not last step's ${s.output}`);
      }
    });
    const out = { [TENSOR_NAMES.logits]: g && complete ? Float32Array.from(g.logits) : new Float32Array(m.numClasses) };
    m.states.forEach((s, i) => {
      out[s.output] = s.dtype === "int8" ? Int8Array.from({ length: s.size }, (_, k) => (call * 7 + i + k) % 256 - 128)
        : Float32Array.from({ length: s.size }, (_, k) => 1000 * (call + 1) + 10 * i + (k % 5));
    });
    served = out;
    call += 1;
    return out;
  };
  const session = new StreamSession(m, runtime, () => 0);
  const { height, width } = golden.frame_format;
  if (height !== m.pre.height || width !== m.pre.width) fail("golden frames are not at the model size");
  for (const [i, step] of golden.steps.entries()) {
    let r;
    for (const b64 of step.frames_u8_b64) r = await session.step(frameInput(Buffer.from(b64, "base64"), m, 3));
    const top = topK(r.logits, 5);
    const want = step.top5.map((t) => t.index);
    if (top.join() !== want.join()) fail(`step ${i}: top-5 ${top} != ${want}`);
    const names = top.map((k) => labels[k]);
    if (names.join("|") !== step.top5.map((t) => t.label).join("|")) fail(`step ${i}: labels ${names}`);
  }
  if (checked !== golden.steps.length) fail(`checked ${checked} inputs, expected ${golden.steps.length}`);
  session.reset();
  m.states.forEach((s) => {
    if (session.states[s.name].some((v) => v !== s.initValue)) fail(`reset left ${s.name} off ${s.initValue}`);
  });
  const ints = m.states.filter((s) => s.dtype === "int8").length;
  return `${m.name} (${m.form} form, ${m.states.length} states${ints ? `, ${ints} int8` : ""}, ` +
    `${golden.steps.length} golden steps)`;
}

await eachBundle(process.argv.slice(2), replay);
