// runtimes.js without a browser, against a real bundle's manifest: the runtime comes from "target", and the
// LiteRT.js adapter feeds every tensor by its signature name (a stub signature lists its inputs and outputs in
// reverse order and echoes each state input, plus one, as `<state>_out`), carries the state through core.js's
// StreamSession, deletes every tensor it made, and refuses a signature whose names or shapes differ.
// Usage: node test/runtimes_check.mjs BUNDLE_DIR [BUNDLE_DIR ...]   (prints "ok <model>" per bundle)
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { eachBundle } from "./each_bundle.mjs";
import { parseManifest, StreamSession, TENSOR_NAMES } from "../core.js";
import { litertRuntime, resolveSignature, runtimeFor, tfliteSignature } from "../runtimes.js";

function fail(msg) {
  throw new Error(msg);
}

function throws(fn, pattern, what) {
  try {
    fn();
  } catch (err) {
    if (!pattern.test(err.message)) fail(`${what}: wrong error "${err.message}"`);
    return;
  }
  fail(`${what}: no error`);
}

/** A stand-in for @litertjs/core: Tensor objects that count their deletions. */
function stubLitert(live) {
  class Tensor {
    constructor(data, shape) {
      this.data = data;
      this.shape = shape;
      live.add(this);
    }

    toTypedArray() {
      return Float32Array.from(this.data);
    }

    delete() {
      if (!live.delete(this)) fail("a tensor was deleted twice");
    }
  }
  return { Tensor };
}

/** A signature with the manifest's tensors in reverse order; run() checks every input by name and shape. */
function stubSignature(litert, m, key, { rename = null, badShape = false } = {}) {
  const details = (names, byName, shape, as = (n) => n) => names.map((name, index) => ({ name: as(name), index,
    dtype: "float32", shape: Int32Array.from(shape(byName(name))), supportedBufferTypes: new Set([1]) }));
  const ins = [...m.inputOrder].reverse();
  const outs = [...m.outputOrder].reverse();
  const inputDetails = details(ins, (n) => m.input(n), (t) => (badShape ? [1, ...t.shape] : t.shape), rename ?? undefined);
  const outputDetails = details(outs, (n) => m.output(n), (t) => t.shape);
  let calls = 0;
  const sig = {
    key,
    getInputDetails: () => inputDetails,
    getOutputDetails: () => outputDetails,
    async run(inputs) {
      if (Array.isArray(inputs)) fail("inputs went by position");
      for (const d of inputDetails) {
        const t = inputs[d.name];
        if (!t) fail(`no input ${d.name}`);
        if (t.shape.join() !== Array.from(d.shape).join()) fail(`${d.name}: shape ${t.shape} != ${d.shape}`);
      }
      calls += 1;
      const out = { [TENSOR_NAMES.logits]: new litert.Tensor(new Float32Array(m.numClasses).fill(calls), [1, m.numClasses]) };
      for (const s of m.states) out[s.output] = new litert.Tensor(inputs[s.name].data.map((v) => v + 1), s.shape);
      return out;
    },
  };
  return { signatures: { [key]: sig } };
}

async function check(dir) {
  const raw = JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8"));
  const m = parseManifest(raw);
  const rt = runtimeFor(raw);
  if (rt.target !== raw.target) fail(`runtime ${rt.target} for target ${raw.target}`);
  throws(() => runtimeFor({ ...raw, target: "coreml" }), /not target "coreml"/, "unknown target");
  throws(() => runtimeFor({ ...raw, artifact: { file: "model.bin" } }), /should end in/, "wrong artifact suffix");
  if (raw.target !== "tflite") return `${m.name} (${raw.target}: ${rt.label})`;

  const key = tfliteSignature(raw);
  const live = new Set();
  const litert = stubLitert(live);
  throws(() => resolveSignature(stubSignature(litert, m, "other"), key, m), /no signature/, "missing signature");
  throws(() => resolveSignature(stubSignature(litert, m, key, { rename: (n) => `serving_default_${n}:0` }), key, m),
    /do not match the manifest/, "renamed inputs");
  throws(() => resolveSignature(stubSignature(litert, m, key, { badShape: true }), key, m), /shape/, "bad shape");
  const { signature, inputs } = resolveSignature(stubSignature(litert, m, key), key, m);
  if (inputs.join() !== [...m.inputOrder].reverse().join()) fail(`inputs ${inputs} are not the signature's order`);
  const session = new StreamSession(m, litertRuntime(litert, signature, m), () => 0);
  const frame = new Float32Array(3 * m.pre.height * m.pre.width);
  for (let step = 1; step <= 3; step++) {
    const r = await session.step(frame);
    if (r.logits[0] !== step) fail(`step ${step}: logits ${r.logits[0]}`);
    for (const s of m.states) {
      const v = session.states[s.name];
      if (v.length !== s.size || v.some((x) => x !== step)) fail(`state ${s.name} after step ${step}: ${v[0]}`);
    }
    if (live.size) fail(`${live.size} tensor(s) left undeleted after step ${step}`);
  }
  return `${m.name} (tflite: signature ${key}, ${m.states.length} states carried by name)`;
}

await eachBundle(process.argv.slice(2), check);
