// The runtimes the page runs a bundle in, picked from the manifest's "target": ONNX bundles in onnxruntime-web,
// TFLite bundles in LiteRT.js (@litertjs/core, wasm with XNNPACK). Each one becomes the `run(feeds) -> outputs`
// function core.js's StreamSession calls, tensors by name, so the state is carried the same way in both.
// The libraries are passed in (no DOM, no globals here): node tests drive this file with stubs.
import { ortRuntime } from "./core.js";

/** manifest.json keys read here, by target (CI checks each against a real manifest of that target). */
export const RUNTIME_MANIFEST_KEYS = Object.freeze({
  onnx: Object.freeze(["target", "artifact", "file", "input_order", "output_order"]),
  tflite: Object.freeze(["target", "artifact", "file", "input_order", "output_order", "tflite", "signature"]),
});

export const DEFAULT_TFLITE_SIGNATURE = "serving_default";

/** Served copies of each runtime's wasm files (no CDN: the page works offline). */
export const WASM_PATHS = Object.freeze({
  onnx: "node_modules/onnxruntime-web/dist/",
  tflite: "node_modules/@litertjs/core/wasm/",
});

export const RUNTIMES = Object.freeze({
  onnx: Object.freeze({ target: "onnx", suffix: ".onnx", label: "onnxruntime-web" }),
  tflite: Object.freeze({ target: "tflite", suffix: ".tflite", label: "LiteRT.js" }),
});

/** The runtime for a parsed manifest.json: its "target" decides; the artifact must carry that target's suffix. */
export function runtimeFor(raw) {
  const rt = RUNTIMES[raw?.target];
  if (!rt) {
    throw new Error(`this page runs ${Object.keys(RUNTIMES).join(" and ")} bundles, not target "${raw?.target}"`);
  }
  const file = raw.artifact?.file ?? "";
  if (!file.endsWith(rt.suffix)) throw new Error(`a ${rt.target} bundle's artifact should end in ${rt.suffix}: ${file}`);
  return rt;
}

/** The TFLite signature the bundle names (manifest "tflite.signature"). */
export function tfliteSignature(raw) {
  return raw?.tflite?.signature ?? DEFAULT_TFLITE_SIGNATURE;
}

function sameNames(got, want, what) {
  const a = [...got].sort().join();
  const b = [...want].sort().join();
  if (a !== b) throw new Error(`signature ${what} [${got.join(", ")}] do not match the manifest's [${want.join(", ")}]`);
}

/**
 * The named signature of a LiteRT.js CompiledModel, checked against the manifest: the same input and output names
 * (in whatever order the signature lists them: every tensor goes by name) and, for each, the manifest's shape.
 */
export function resolveSignature(compiled, name, manifest) {
  const sigs = compiled.signatures;
  const sig = sigs[name];
  if (!sig) throw new Error(`the model has no signature "${name}" (has ${Object.keys(sigs).join(", ") || "none"})`);
  const ins = sig.getInputDetails();
  const outs = sig.getOutputDetails();
  sameNames(ins.map((d) => d.name), manifest.inputOrder, "inputs");
  sameNames(outs.map((d) => d.name), manifest.outputOrder, "outputs");
  for (const d of ins) {
    const want = manifest.input(d.name).shape;
    if (Array.from(d.shape).join() !== want.join()) throw new Error(`input ${d.name}: shape [${d.shape}] != [${want}]`);
  }
  for (const d of outs) {
    const want = manifest.output(d.name).size;
    const size = Array.from(d.shape).reduce((p, x) => p * x, 1);
    if (size !== want) throw new Error(`output ${d.name}: ${size} values, the manifest says ${want}`);
  }
  return { signature: sig, inputs: ins.map((d) => d.name), outputs: outs.map((d) => d.name) };
}

/**
 * A LiteRT.js signature -> the StreamSession runtime: each feed becomes a Tensor of its manifest shape, the
 * signature runs with the tensors by name, and every output comes back by name as a Float32Array copy; every
 * tensor is deleted after the call (LiteRT.js memory is managed by hand).
 */
export function litertRuntime(litert, signature, manifest) {
  const shapes = Object.fromEntries(manifest.inputs.map((t) => [t.name, t.shape]));
  return async (feeds) => {
    const inputs = {};
    let results = {};
    try {
      for (const [name, data] of Object.entries(feeds)) inputs[name] = new litert.Tensor(data, shapes[name]);
      results = await signature.run(inputs);
      const out = {};
      for (const [name, t] of Object.entries(results)) out[name] = t.toTypedArray();
      return out;
    } finally {
      for (const t of [...Object.values(inputs), ...Object.values(results)]) t.delete();
    }
  };
}

const threadCount = (n) => `${n} thread${n > 1 ? "s" : ""}`;

/**
 * Load the bundle's runtime and compile its artifact: {run, inputs, outputs, label, dispose}. `libs.ort` is the
 * onnxruntime-web global; `libs.litert()` imports @litertjs/core (only when a TFLite bundle is loaded);
 * `wasmBase` is the URL the node_modules folder is served under.
 */
export async function createRuntime(raw, manifest, bytes, { libs, wasmBase, threads = 1 }) {
  const rt = runtimeFor(raw);
  if (rt.target === "onnx") {
    const ort = libs.ort;
    if (!ort) throw new Error("onnxruntime-web is not loaded (node_modules/onnxruntime-web)");
    ort.env.wasm.wasmPaths = new URL(WASM_PATHS.onnx, wasmBase).href;
    ort.env.wasm.numThreads = threads;
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
    return { run: ortRuntime(ort, session, manifest), inputs: [...session.inputNames], outputs: [...session.outputNames],
      dispose: () => session.release(), label: `${rt.label} ${ort.env.versions?.web ?? ""} (wasm, ${threadCount(threads)})` };
  }
  const litert = await libs.litert();
  if (!litert.getGlobalLiteRtPromise()) {
    const dir = new URL(WASM_PATHS.tflite, wasmBase).href;
    // the threaded wasm needs cross-origin isolation and relaxed SIMD; without them, one thread
    await litert.loadLiteRt(dir, { threads: threads > 1 }).catch(() => {
      threads = 1;
      return litert.loadLiteRt(dir);
    });
  }
  await litert.getGlobalLiteRtPromise();
  const compiled = await litert.loadAndCompile(bytes, { accelerator: "wasm", cpuOptions: { numThreads: threads } });
  const { signature, inputs, outputs } = resolveSignature(compiled, tfliteSignature(raw), manifest);
  return { run: litertRuntime(litert, signature, manifest), inputs, outputs, dispose: () => compiled.delete(),
    label: `${rt.label} (wasm + XNNPACK, ${threadCount(threads)}; signature ${signature.key})` };
}
