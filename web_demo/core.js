// The app-independent part of the web demo: the bundle contract (manifest.json), preprocessing, the frame loop
// that carries every state, and top-k. No DOM here; app.js wires it to a page, onnxruntime-web and a video.

/** Every manifest.json key the app reads (CI checks each against a real exported manifest). */
export const MANIFEST_KEYS = Object.freeze([
  "model", "name", "num_classes", "num_frames", "form", "target", "artifact", "file", "preprocessing", "size",
  "value_range", "mean", "std", "resize", "fps", "frame_stride", "channel_order", "labels", "inputs", "outputs",
  "states", "input_order", "output_order", "shape", "dtype", "layout", "output",
]);

/** Keys of an integer-boundary manifest (`stexport --io int8`): per-tensor quantization and integer state init. */
export const INTEGER_KEYS = Object.freeze(["quantization", "scale", "zero_point", "init", "init_value"]);

/** Typed array per manifest dtype: float32 everywhere by default; uint8 frames and int8 states with --io int8. */
export const DTYPE_ARRAYS = Object.freeze({ float32: Float32Array, uint8: Uint8Array, int8: Int8Array });

/** Tensor names fixed by the stexport contract (everything else comes from the manifest). */
export const TENSOR_NAMES = Object.freeze({ frame: "frame", clip: "clip", logits: "logits", stateOutputSuffix: "_out" });

export const CLIP_LAYOUTS = Object.freeze(["N(T*C)HW", "N(C*T)HW", "NCTHW"]);

const prod = (shape) => shape.reduce((a, b) => a * b, 1);

function need(cond, msg) {
  if (!cond) throw new Error(`manifest: ${msg}`);
}

/** manifest.json (parsed) -> the contract the frame loop needs; throws on a bundle that breaks it. */
export function parseManifest(m) {
  need(m && typeof m === "object", "not an object");
  for (const k of ["model", "form", "inputs", "outputs", "states", "preprocessing", "artifact", "input_order"]) {
    need(k in m, `missing "${k}"`);
  }
  const p = m.preprocessing;
  need(Array.isArray(p.size) && p.size.length === 2, "preprocessing.size must be [height, width]");
  const order = p.channel_order ?? "RGB";
  need(order === "RGB", `only RGB channel order is supported, not ${order}`);
  const resize = p.resize ?? "shorter side, then center crop";
  const shorter = /shorter side to (\d+)/.exec(resize);
  const pre = {
    height: p.size[0], width: p.size[1],
    valueRange: p.value_range ?? [0, 1], mean: p.mean ?? [0, 0, 0], std: p.std ?? [1, 1, 1],
    resize, resizeShorter: p.resize_shorter ?? (shorter ? Number(shorter[1]) : null),
    fps: p.fps ?? null, frameStride: p.frame_stride ?? 1,
  };
  const tensor = (t) => ({ name: t.name, shape: t.shape, dtype: t.dtype ?? "float32", layout: t.layout ?? "",
    size: prod(t.shape), quantization: t.quantization ?? null });
  const inputs = m.inputs.map(tensor);
  const outputs = m.outputs.map(tensor);
  // an int8 state starts at its zero point (the integer that means 0.0), a float32 state at 0
  const states = m.states.map((s) => {
    const dtype = s.dtype ?? "float32";
    const q = s.quantization ?? null;
    need(dtype === "float32" || (dtype === "int8" && q && s.init === "zero_point"),
      `state ${s.name} is ${dtype}${dtype === "int8" ? " without quantization and zero_point init" : ""}`);
    const initValue = dtype === "int8" ? (s.init_value ?? q.zero_point) : 0;
    need(initValue === q?.zero_point || dtype === "float32", `state ${s.name}: init_value is not its zero point`);
    return { name: s.name, output: s.output, shape: s.shape, size: prod(s.shape), dtype, quantization: q, initValue };
  });
  const byName = (list, name, what) => {
    const t = list.find((x) => x.name === name);
    need(t, `no ${what} "${name}" (has ${list.map((x) => x.name).join(", ")})`);
    return t;
  };
  const model = m.model;
  const out = {
    name: model.name, numClasses: model.num_classes, numFrames: model.num_frames, form: m.form,
    target: m.target, artifact: m.artifact.file, labelsFile: m.labels?.file ?? "labels.txt",
    pre, inputs, outputs, states, inputOrder: m.input_order, outputOrder: m.output_order ?? outputs.map((t) => t.name),
    input: (n) => byName(inputs, n, "input"), output: (n) => byName(outputs, n, "output"),
  };
  const stateDtype = Object.fromEntries(states.flatMap((s) => [[s.name, s.dtype], [s.output, s.dtype]]));
  for (const t of [...inputs, ...outputs]) {
    const want = t.name === TENSOR_NAMES.frame ? t.dtype : stateDtype[t.name] ?? "float32";
    need(t.dtype === want && t.dtype in DTYPE_ARRAYS, `${t.name} is ${t.dtype}, not ${want}`);
  }
  need(out.output(TENSOR_NAMES.logits).size === out.numClasses, "logits size != num_classes");
  if (m.form === "stream") {
    const f = out.input(TENSOR_NAMES.frame);
    // float32 NCHW, preprocessed here; or (integer boundary) uint8 NHWC RGB bytes, preprocessed inside the graph
    out.rawFrame = f.dtype === "uint8";
    const shape = out.rawFrame ? [1, pre.height, pre.width, 3] : [1, 3, pre.height, pre.width];
    need(f.dtype === "float32" || out.rawFrame, `frame is ${f.dtype}, not float32 or uint8`);
    need(f.shape.join() === shape.join(), `frame shape ${f.shape} != [${shape}]`);
    for (const s of states) {
      need(out.input(s.name).size === s.size, `state ${s.name}: input size mismatch`);
      need(out.output(s.output).size === s.size, `state ${s.name}: output ${s.output} size mismatch`);
    }
  } else if (m.form === "clip") {
    const c = out.input(TENSOR_NAMES.clip);
    need(CLIP_LAYOUTS.includes(c.layout), `unknown clip layout "${c.layout}"`);
    need(c.size === 3 * out.numFrames * pre.height * pre.width, "clip input size mismatch");
    out.clipLayout = c.layout;
  } else {
    need(false, `unknown form "${m.form}"`);
  }
  return out;
}

/** labels.txt -> array (line i is class i). */
export function parseLabels(text) {
  return text.split(/\r?\n/).filter((l) => l.trim().length > 0);
}

/** The source rectangle "resize the shorter side, then centre crop" keeps, for a srcW x srcH image. */
export function cropRect(srcW, srcH, pre) {
  const s = pre.resizeShorter ? pre.resizeShorter / Math.min(srcW, srcH)
    : Math.max(pre.width / srcW, pre.height / srcH);
  const w = Math.min(srcW, pre.width / s);
  const h = Math.min(srcH, pre.height / s);
  return { x: (srcW - w) / 2, y: (srcH - h) / 2, w, h };
}

/**
 * Pixels at the model size (RGB or RGBA bytes, row-major) -> float32 NCHW [1, 3, H, W]:
 * x = (u8 / 255 * (hi - lo) + lo - mean[c]) / std[c], every operation rounded to float32 in the exporter's order,
 * so the tensor is bit-identical to the reference preprocessing.
 */
export function normalize(pixels, pre, channels = 3, out = new Float32Array(3 * pre.height * pre.width)) {
  const hw = pre.height * pre.width;
  if (pixels.length !== channels * hw) throw new Error(`expected ${channels * hw} bytes, got ${pixels.length}`);
  const f = Math.fround;
  const lo = f(pre.valueRange[0]);
  const scale = f(pre.valueRange[1] - pre.valueRange[0]);
  for (let c = 0; c < 3; c++) {
    const m = f(pre.mean[c]);
    const s = f(pre.std[c]);
    const base = c * hw;
    for (let p = 0; p < hw; p++) {
      const x = f(f(f(pixels[p * channels + c] / 255) * scale) + lo);
      out[base + p] = f(x - m) / s;
    }
  }
  return out;
}

/**
 * Pixels at the model size (RGB or RGBA bytes, row-major) -> uint8 NHWC [1, H, W, 3] RGB bytes: the frame of an
 * integer-boundary bundle, whose graph applies the preprocessing itself.
 */
export function rgbBytes(pixels, pre, channels = 3, out = new Uint8Array(3 * pre.height * pre.width)) {
  const hw = pre.height * pre.width;
  if (pixels.length !== channels * hw) throw new Error(`expected ${channels * hw} bytes, got ${pixels.length}`);
  if (channels === 3) out.set(pixels);
  else for (let p = 0; p < hw; p++) for (let c = 0; c < 3; c++) out[p * 3 + c] = pixels[p * channels + c];
  return out;
}

/** The model's frame input for pixels at the model size: `rgbBytes` (uint8 frame) or `normalize` (float32). */
export function frameInput(pixels, manifest, channels = 3) {
  return manifest.rawFrame ? rgbBytes(pixels, manifest.pre, channels) : normalize(pixels, manifest.pre, channels);
}

/** An int8 tensor's real values (scale * (q - zero_point)), float32. */
export function dequantize(values, q) {
  return Float32Array.from(values, (v) => q.scale * (v - q.zero_point));
}

/** The last T frames (zeros before the first), packed in a clip layout; for clip-form bundles. */
export class ClipRing {
  constructor(frames, frameSize, layout) {
    if (!CLIP_LAYOUTS.includes(layout)) throw new Error(`unknown clip layout ${layout}`);
    this.frames = frames;
    this.frameSize = frameSize;
    this.layout = layout;
    this.ring = Array.from({ length: frames }, () => new Float32Array(frameSize));
    this.next = 0;
  }

  reset() {
    this.ring.forEach((f) => f.fill(0));
    this.next = 0;
  }

  push(frame) {
    this.ring[this.next].set(frame);
    this.next = (this.next + 1) % this.frames;
  }

  /** Oldest first. N(T*C)HW: channel t*3+c; N(C*T)HW and NCTHW: channel c*T+t. */
  packed() {
    const hw = this.frameSize / 3;
    const out = new Float32Array(this.frames * this.frameSize);
    for (let t = 0; t < this.frames; t++) {
      const f = this.ring[(this.next + t) % this.frames];
      for (let c = 0; c < 3; c++) {
        const ch = this.layout === "N(T*C)HW" ? t * 3 + c : c * this.frames + t;
        out.set(f.subarray(c * hw, (c + 1) * hw), ch * hw);
      }
    }
    return out;
  }
}

/** A fed tensor that does not match the manifest (name, shape, dtype) or is not finite; the state is unchanged. */
export class InputError extends Error {
  constructor(message) {
    super(message);
    this.name = "InputError";
  }
}

/**
 * Checks one frame against the manifest: a Float32Array (float32) of 3 x H x W values (shape [1, 3, H, W]), all
 * finite; or, with `raw` (a uint8 frame input), a Uint8Array of RGB bytes [1, H, W, 3]. Throws InputError saying
 * what was expected; cheap (one pass over the frame).
 */
export function checkFrame(frame, pre, raw = false) {
  const n = 3 * pre.height * pre.width;
  const want = raw ? `uint8 [1, ${pre.height}, ${pre.width}, 3] (${n} RGB bytes)`
    : `float32 [1, 3, ${pre.height}, ${pre.width}] (${n} values)`;
  const type = raw ? Uint8Array : Float32Array;
  if (!(frame instanceof type)) {
    const got = frame?.constructor?.name ?? typeof frame;
    throw new InputError(`frame is a ${got}, expected a ${type.name}: ${want}; the state is unchanged`);
  }
  if (raw) {
    if (frame.length !== n) throw new InputError(`frame has ${frame.length} values, expected ${want}; the state is unchanged`);
    return;
  }
  if (frame.length !== 3 * pre.height * pre.width) {
    throw new InputError(`frame has ${frame.length} values, expected ${want}; the state is unchanged`);
  }
  for (let i = 0; i < frame.length; i++) {
    if (!Number.isFinite(frame[i])) {
      throw new InputError(`frame holds a non-finite value (${frame[i]} at ${i}); expected ${want}, finite; ` +
        "the state is unchanged");
    }
  }
}

/**
 * The frame loop every model shares. `run(feeds)` is the runtime: feeds {name: typed array} -> outputs
 * {name: typed array}, each of its manifest dtype (Float32Array; with an integer boundary a Uint8Array frame and
 * Int8Array states). Stream form: feed `frame` and every state, then carry each state's output (`<state>_out`)
 * back for the next step; states start at their init (0, or an int8 state's zero point). Clip form: feed the ring
 * of the last T frames.
 */
export class StreamSession {
  constructor(manifest, run, now = () => performance.now()) {
    this.m = manifest;
    this.run = run;
    this.now = now;
    this.frameSize = 3 * manifest.pre.height * manifest.pre.width;
    this.ring = manifest.form === "clip" ? new ClipRing(manifest.numFrames, this.frameSize, manifest.clipLayout) : null;
    this.reset();
  }

  reset() {
    this.states = {};
    for (const s of this.m.states) this.states[s.name] = new DTYPE_ARRAYS[s.dtype](s.size).fill(s.initValue);
    if (this.ring) this.ring.reset();
    this.steps = 0;
  }

  /** Named feeds, as the bundle's contract names them: exactly {frame: Float32Array}. */
  async stepFeeds(feeds) {
    const names = feeds && typeof feeds === "object" ? Object.keys(feeds).sort() : [];
    if (names.join() !== TENSOR_NAMES.frame) {
      const { height: h, width: w } = this.m.pre;
      const want = this.m.rawFrame ? `uint8 [1, ${h}, ${w}, 3]` : `float32 [1, 3, ${h}, ${w}]`;
      throw new InputError(`step takes {${TENSOR_NAMES.frame}: ${want}}, got inputs [${names.join(", ")}]; ` +
        "the state is unchanged");
    }
    return this.step(feeds[TENSOR_NAMES.frame]);
  }

  /**
   * One frame: preprocessed Float32Array NCHW [1, 3, H, W], or (integer boundary) Uint8Array RGB NHWC
   * [1, H, W, 3] (`frameInput` makes either); refused with InputError, state kept, if it is not.
   */
  async step(frame) {
    checkFrame(frame, this.m.pre, this.m.rawFrame);
    const feeds = {};
    if (this.ring) {
      this.ring.push(frame);
      feeds[TENSOR_NAMES.clip] = this.ring.packed();
    } else {
      feeds[TENSOR_NAMES.frame] = frame;
      for (const s of this.m.states) feeds[s.name] = this.states[s.name];
    }
    const t0 = this.now();
    const out = await this.run(feeds);
    const ms = this.now() - t0;
    const logits = out[TENSOR_NAMES.logits];
    if (!logits || logits.length !== this.m.numClasses) throw new Error("runtime returned no logits of the right size");
    const next = {};
    for (const s of this.m.states) {
      const v = out[s.output];
      if (!v || v.length !== s.size) throw new Error(`runtime returned no ${s.output} of size ${s.size}`);
      if (!(v instanceof DTYPE_ARRAYS[s.dtype])) throw new Error(`runtime returned ${s.output} not as ${s.dtype}`);
      next[s.name] = v;
    }
    Object.assign(this.states, next);
    this.steps += 1;
    return { step: this.steps - 1, logits, ms };
  }
}

/** onnxruntime-web InferenceSession -> the StreamSession runtime (tensors by name, shapes from the manifest). */
export function ortRuntime(ort, session, manifest) {
  const shapes = Object.fromEntries(manifest.inputs.map((t) => [t.name, t.shape]));
  const dtypes = Object.fromEntries(manifest.inputs.map((t) => [t.name, t.dtype]));
  return async (feeds) => {
    const inputs = {};
    for (const [name, data] of Object.entries(feeds)) inputs[name] = new ort.Tensor(dtypes[name], data, shapes[name]);
    const results = await session.run(inputs);
    const out = {};
    for (const [name, t] of Object.entries(results)) out[name] = t.data;
    return out;
  };
}

export function softmax(logits) {
  let m = -Infinity;
  for (const v of logits) m = Math.max(m, v);
  const e = Array.from(logits, (v) => Math.exp(v - m));
  const s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

/** Indices of the k largest values, largest first (ties: lower index first). */
export function topK(values, k) {
  return Array.from(values, (v, i) => i).sort((a, b) => values[b] - values[a] || a - b).slice(0, k);
}

/** Exponential moving average of class probabilities (alpha = weight of the newest frame). */
export class Smoother {
  constructor(alpha = 0.3) {
    this.alpha = alpha;
    this.avg = null;
  }

  update(p) {
    this.avg = this.avg && this.avg.length === p.length ? this.avg.map((a, i) => a + this.alpha * (p[i] - a)) : [...p];
    return this.avg;
  }

  reset() {
    this.avg = null;
  }
}
