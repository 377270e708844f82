// The page: load a bundle, stream frames from a video file, the webcam or (in tests) raw RGB frames, run each
// through the bundle's runtime (onnxruntime-web for ONNX, LiteRT.js for TFLite; runtimes.js) with the state
// carried frame to frame, and show the top-5 and the time per frame.
import {
  cropRect, frameInput, parseLabels, parseManifest, Smoother, softmax, StreamSession, topK,
} from "./core.js";
import { createRuntime, runtimeFor } from "./runtimes.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const ui = {
  view: $("view"), video: $("video"), status: $("status"), modelLine: $("model-line"), sourceLine: $("source-line"),
  top5: $("top5"), ms: $("ms"), msMean: $("ms-mean"), frameNo: $("frame-no"), stateCount: $("state-count"),
  runtime: $("runtime"),
};

const demo = {
  manifest: null, labels: [], runtime: null, stream: null, smoother: new Smoother(0.3),
  running: false, msHistory: [], work: document.createElement("canvas"),
};

function status(text) {
  ui.status.textContent = text;
}

const threads = Number(params.get("threads") ?? (self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1));
// the libraries runtimes.js drives: onnxruntime-web's global (index.html), LiteRT.js imported on first use
const libs = { ort: self.ort, litert: () => import("./node_modules/@litertjs/core/dist/index.js") };

/** Load a bundle: the manifest, its labels and the artifact (bytes), then the runtime its target names. */
async function loadBundle(files) {
  const raw = JSON.parse(await files.text("manifest.json"));
  const manifest = parseManifest(raw);
  const kind = runtimeFor(raw);
  let labels = [];
  try {
    labels = parseLabels(await files.text(manifest.labelsFile));
  } catch {
    labels = [];
  }
  const bytes = new Uint8Array(await files.bytes(manifest.artifact));
  status(`Compiling ${manifest.artifact} (${(bytes.length / 1e6).toFixed(1)} MB) for ${kind.label}…`);
  const runtime = await createRuntime(raw, manifest, bytes, { libs, wasmBase: location.href, threads });
  demo.runtime?.dispose();
  demo.manifest = manifest;
  demo.labels = labels;
  demo.runtime = runtime;
  demo.stream = new StreamSession(manifest, runtime.run);
  ui.runtime.textContent = runtime.label;
  demo.work.width = manifest.pre.width;
  demo.work.height = manifest.pre.height;
  resetState();
  const p = manifest.pre;
  ui.modelLine.textContent = `${manifest.name} — ${manifest.form} form, ${p.height}×${p.width}, ` +
    `${manifest.numClasses} classes, frame stride ${p.frameStride}`;
  ui.stateCount.textContent = manifest.form === "clip" ? `clip ring of ${manifest.numFrames} frames (in the page)`
    : `${manifest.states.length} carried (${manifest.states.map((s) => s.name).slice(0, 4).join(", ")}` +
      `${manifest.states.length > 4 ? ", …" : ""})`;
  status("Ready: choose a video file or the webcam.");
  return { name: manifest.name, form: manifest.form, target: kind.target, runtime: runtime.label,
    states: manifest.states.map((s) => s.name), inputs: runtime.inputs, outputs: runtime.outputs };
}

const urlFiles = (base) => {
  const url = (name) => new URL(name, new URL(base, location.href)).href;
  const get = async (name) => {
    const r = await fetch(url(name));
    if (!r.ok) throw new Error(`${url(name)}: HTTP ${r.status}`);
    return r;
  };
  return { text: async (n) => (await get(n)).text(), bytes: async (n) => (await get(n)).arrayBuffer() };
};

const pickedFiles = (fileList) => {
  const byName = new Map([...fileList].map((f) => [f.name, f]));
  const get = (name) => {
    const f = byName.get(name);
    if (!f) throw new Error(`the chosen folder has no ${name}`);
    return f;
  };
  return { text: async (n) => get(n).text(), bytes: async (n) => get(n).arrayBuffer() };
};

function resetState() {
  demo.stream?.reset();
  demo.smoother.reset();
  demo.msHistory = [];
  ui.top5.replaceChildren();
  ui.ms.textContent = ui.msMean.textContent = ui.frameNo.textContent = "–";
}

/** One frame at the model size (RGB or RGBA bytes) through the loop; updates the panel. */
async function runFrame(pixels, channels) {
  const x = frameInput(pixels, demo.manifest, channels); // float32 NCHW, or uint8 RGB for an integer boundary
  const r = await demo.stream.step(x);
  const probs = demo.smoother.update(softmax(r.logits));
  demo.msHistory.push(r.ms);
  if (demo.msHistory.length > 30) demo.msHistory.shift();
  render(r, probs);
  return r;
}

function render(r, probs) {
  const rows = topK(probs, 5).map((i) => {
    const li = document.createElement("li");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * probs[i]).toFixed(1)}%`;
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = demo.labels[i] ?? `class_${i}`;
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(100 * probs[i]).toFixed(1)}%`;
    li.append(bar, label, pct);
    return li;
  });
  ui.top5.replaceChildren(...rows);
  const mean = demo.msHistory.reduce((a, b) => a + b, 0) / demo.msHistory.length;
  ui.ms.textContent = r.ms.toFixed(1);
  ui.msMean.textContent = mean.toFixed(1);
  ui.frameNo.textContent = String(r.step + 1);
}

/** Draw the model's crop of a video/webcam frame into the work canvas; also show the frame in the view. */
function grab(source, srcW, srcH) {
  const p = demo.manifest.pre;
  const c = cropRect(srcW, srcH, p);
  const wctx = demo.work.getContext("2d", { willReadFrequently: true });
  wctx.imageSmoothingQuality = "high";
  wctx.drawImage(source, c.x, c.y, c.w, c.h, 0, 0, p.width, p.height);
  const vctx = ui.view.getContext("2d");
  vctx.drawImage(demo.work, 0, 0, ui.view.width, ui.view.height);
  return wctx.getImageData(0, 0, p.width, p.height).data;
}

function requireModel() {
  if (!demo.stream) throw new Error("load a bundle first");
}

const once = (el, ev) => new Promise((resolve, reject) => {
  el.addEventListener(ev, resolve, { once: true });
  el.addEventListener("error", () => reject(new Error(`video error ${el.error?.code ?? ""} ${el.error?.message ?? ""}`)),
    { once: true });
});

/**
 * A video file, frame by frame: seek, draw, infer, next. Every `frame_stride`-th frame of the source at `fps`
 * (the manifest's fps, else ?fps=, else 25) is used, so results do not depend on the machine's speed.
 */
async function playVideo(url, { maxFrames = Infinity, fps, start = 0 } = {}) {
  requireModel();
  stop();
  const v = ui.video;
  v.srcObject = null;
  v.src = url;
  if (v.readyState < 1) await once(v, "loadedmetadata");
  const rate = fps ?? demo.manifest.pre.fps ?? Number(params.get("fps") ?? 25);
  const dt = demo.manifest.pre.frameStride / rate;
  ui.sourceLine.textContent = `video ${v.videoWidth}×${v.videoHeight}, ${v.duration.toFixed(1)} s; ` +
    `a frame every ${(1000 * dt).toFixed(0)} ms of video`;
  demo.running = true;
  const results = [];
  for (let t = start, n = 0; demo.running && t < v.duration && n < maxFrames; t += dt, n++) {
    v.currentTime = t;
    await once(v, "seeked");
    const r = await runFrame(grab(v, v.videoWidth, v.videoHeight), 4);
    results.push(Array.from(r.logits));
    status(`video: frame ${n + 1} at ${t.toFixed(2)} s`);
  }
  demo.running = false;
  return results;
}

async function startWebcam() {
  requireModel();
  stop();
  const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  const v = ui.video;
  v.src = "";
  v.srcObject = stream;
  await v.play();
  ui.sourceLine.textContent = `webcam ${v.videoWidth}×${v.videoHeight} (live: frames arrive as fast as the model runs)`;
  demo.running = true;
  while (demo.running) {
    await runFrame(grab(v, v.videoWidth, v.videoHeight), 4);
    await new Promise((r) => requestAnimationFrame(r));
  }
  stream.getTracks().forEach((t) => t.stop());
}

function stop() {
  demo.running = false;
}

/**
 * Test mode: raw RGB frames (uint8, [count, H, W, 3] at the model size, decoded by the caller) from `url`.
 * Returns the logits of every frame so a test can compare them with onnxruntime in Python.
 */
async function runRawFrames(url, { count, width, height }) {
  requireModel();
  const p = demo.manifest.pre;
  if (width !== p.width || height !== p.height) throw new Error(`frames are ${width}x${height}, model wants ${p.width}x${p.height}`);
  const buf = new Uint8Array(await (await fetch(url)).arrayBuffer());
  const size = width * height * 3;
  if (buf.length < count * size) throw new Error(`${url} holds ${buf.length} bytes, need ${count * size}`);
  ui.sourceLine.textContent = `raw RGB frames (${count} × ${width}×${height}) decoded from a video by the caller`;
  const rgba = new ImageData(width, height);
  const results = [];
  for (let n = 0; n < count; n++) {
    const frame = buf.subarray(n * size, (n + 1) * size);
    for (let i = 0; i < width * height; i++) {
      rgba.data[4 * i] = frame[3 * i];
      rgba.data[4 * i + 1] = frame[3 * i + 1];
      rgba.data[4 * i + 2] = frame[3 * i + 2];
      rgba.data[4 * i + 3] = 255;
    }
    demo.work.getContext("2d").putImageData(rgba, 0, 0);
    ui.view.getContext("2d").drawImage(demo.work, 0, 0, ui.view.width, ui.view.height);
    const r = await runFrame(frame, 3);
    results.push(Array.from(r.logits));
    status(`test frames: ${n + 1} / ${count}`);
  }
  return { logits: results, ms: demo.msHistory.slice() };
}

function wire() {
  $("bundle-input").addEventListener("change", (e) => {
    loadBundle(pickedFiles(e.target.files)).catch((err) => status(`Cannot load the bundle: ${err.message}`));
  });
  $("video-input").addEventListener("change", (e) => {
    const f = e.target.files[0];
    if (f) playVideo(URL.createObjectURL(f)).then(() => status("Video done.")).catch((err) => status(err.message));
  });
  $("webcam").addEventListener("click", () => startWebcam().catch((err) => status(`Webcam: ${err.message}`)));
  $("stop").addEventListener("click", stop);
  $("reset").addEventListener("click", () => {
    resetState();
    status("State cleared: the next frame is frame 0.");
  });
}

// The API the buttons use, also driven by the tests.
window.stexportDemo = {
  loadBundleUrl: (base) => loadBundle(urlFiles(base)),
  playVideo, runRawFrames, startWebcam, stop, reset: resetState,
  ready: false,
};

try {
  wire();
  window.stexportDemo.ready = true;
  status("Choose a bundle folder.");
  const bundle = params.get("bundle");
  if (bundle) {
    window.stexportDemo.loaded = loadBundle(urlFiles(bundle.endsWith("/") ? bundle : `${bundle}/`))
      .then((info) => {
        const video = params.get("video");
        if (video) playVideo(video).then(() => status("Video done.")).catch((err) => status(err.message));
        return info;
      })
      .catch((err) => {
        status(`Cannot load the bundle: ${err.message}`);
        throw err;
      });
  }
} catch (err) {
  status(`Cannot start: ${err.message} (run "npm ci" in web_demo/ so node_modules/ has onnxruntime-web and @litertjs/core)`);
}
