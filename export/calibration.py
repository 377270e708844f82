"""Quantization support shared by the targets: calibration data and the state-update path kept in float32.

Calibration (full ``int8``): ``--calibration DIR_OR_VIDEO`` is a folder of images (sorted by name, one frame each)
or a video file; frames are decoded with ffmpeg (the imageio-ffmpeg wheel's binary, else ``ffmpeg`` on PATH),
shorter side scaled (to the manifest's ``resize_shorter``, else to cover the input), centre-cropped to the model's
size, then run through the manifest's preprocessing (`stexport.frames.preprocess`). Without it the export falls
back, with a warning, to the motion7 training split (motion7 models) or to `synthetic_frames` (any other model).

A stream model is calibrated the way an app runs it: the PyTorch reference steps through each sequence from zero
state, carrying its state, and every step's inputs (frame and states) are one calibration sample, so the
activations of the state path are observed. A long sequence is sampled every ``STREAM_STRIDE``-th frame: the
samples then span ``STREAM_STRIDE`` times as many frames of one stream, so the ranges see states of a long stream
(running means at frame 300 are not those at frame 8) as well as its first frames. A clip model gets one sample per
``num_frames`` frames. The samples are kept in memory-mapped files (`SampleStore`), not on the heap.

The state-update path (`state_path`): the ops on a path from a state input to a state output that passes through
no weighted op (convolution, matmul, fully connected) -- buffer concatenations and slices, running-mean updates,
frame counters and the ``1/count`` rates derived from them. Quantized exports keep these ops in float32: an int8
running mean or counter would drift or saturate over a long stream. Weighted compute is quantized as asked.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stexport.bundle import abandoned
from stexport.errors import StexportError
from stexport.frames import preprocess, synthetic_frames
from stexport.models._registry import ModelEntry, Preprocess
from stexport.spec import IOSpec

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"})
#: default calibration size: stream models, samples (frames); clip models, clips. With 8 clips the int8 clip form
#: of movinet_a0_stream_motion7 failed its LiteRT parity gate (max abs err 0.99, tol 0.93); 16: 0.46 (ExecuTorch 0.45).
#: Stream forms, 128 -> 256 samples (2026-12-06, all 700 motion7 test clips, logit SNR; accuracy moves by up to a
#: point between two calibration draws of one size, SNR by about 1 dB): tsm_mobilenetv2_online_motion7 +2.2 to
#: +3.7 dB on LiteRT, ONNX Runtime and ExecuTorch; movinet_a0_stream_motion7 on ExecuTorch +1.0 and +1.6 dB in two
#: draws (98.1% -> 99.1% and 98.7% -> 98.9%, fp32 99.4%), on LiteRT -0.5 dB (98.7% -> 98.7%), on ONNX Runtime
#: -0.2 dB in both draws (98.6% -> 98.3%, 98.1% -> 98.6%). Sampling 128 of twice as many frames gained half as much.
#: docs/precision.md, "How much calibration", has the table.
STREAM_FRAMES = 256
CLIP_COUNT = 16
#: ... unless the stream samples would pass this many bytes of files (every state is in each sample): then half.
#: movinet_a4_stream (50 MB a sample) and movinet_a5_stream (76 MB) calibrate on 128.
STREAM_SAMPLES_BYTES = 8 * 2**30
#: a video (or the motion7 stream) calibrates on every STREAM_STRIDE-th step of a stream this many times longer
STREAM_STRIDE = 3
#: motion7 fallback: clips of this many frames, each streamed from zero state (as the models were trained)
MOTION7_FRAMES = 8


class CalibrationError(StexportError):
    """Calibration frames could not be read."""


#: a `SampleStore`'s folder in the system's temporary folder: this, the process id, "-", a random suffix
STORE_PREFIX = "stexport-calibration-"


def remove_orphaned_stores(*, dead_pid: int | None = None) -> None:
    """Delete the sample folders of exports killed before they could (SIGKILL: no finalizer runs; a stream model's
    samples take gigabytes), those of processes that no longer run (`stexport.bundle.abandoned`), and those of
    ``dead_pid`` (a child export known to have died) at once."""
    for folder in Path(tempfile.gettempdir()).glob(f"{STORE_PREFIX}*"):
        m = re.match(re.escape(STORE_PREFIX) + r"(\d+)-", folder.name)
        if m is not None and abandoned(folder, int(m.group(1)), dead_pid=dead_pid):
            shutil.rmtree(folder, ignore_errors=True)


class SampleStore(Sequence[dict[str, np.ndarray]]):
    """Up to ``capacity`` calibration samples (feeds: input name -> array, the same names and shapes in each), kept in
    memory-mapped files in a temporary folder that goes with the store. A stream sample holds every state (75 MB
    for movinet_a5_stream: its 128 samples are 9.6 GB), which the kernel can write out and read back as the
    calibrators go through them, where the same bytes on the heap had to fit in RAM beside the converters'."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self._len = capacity, 0
        self._columns: dict[str, np.memmap] = {}
        remove_orphaned_stores()
        self.folder = Path(tempfile.mkdtemp(prefix=f"{STORE_PREFIX}{os.getpid()}-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)

    def append(self, feeds: dict[str, np.ndarray]) -> None:
        if self._len == self.capacity:
            raise IndexError(f"the store holds {self.capacity} samples")
        if not self._columns:
            self._columns = {k: np.lib.format.open_memmap(self.folder / f"{i}.npy", mode="w+", dtype=v.dtype,
                                                          shape=(self.capacity, *v.shape))
                             for i, (k, v) in enumerate(feeds.items())}
        for k, column in self._columns.items():
            column[self._len] = feeds[k]
        self._len += 1

    def __len__(self) -> int:
        return self._len

    def _sample(self, i: int) -> dict[str, np.ndarray]:
        return {k: column[i] for k, column in self._columns.items()}

    def __getitem__(self, i: int | slice) -> Any:  # a sample, or a list of them for a slice
        if isinstance(i, slice):
            return [self._sample(j) for j in range(*i.indices(self._len))]
        if not -self._len <= i < self._len:
            raise IndexError(i)
        return self._sample(i % self._len)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return (self._sample(j) for j in range(self._len))


@dataclass
class Calibration:
    """Samples for calibrating a quantized export: feeds of the exported graph (input names -> float32 arrays),
    states included, in stepping order (a `SampleStore`, or any sequence of feeds)."""

    samples: Sequence[dict[str, np.ndarray]]
    source: str
    frames: int
    sequences: int
    warning: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "frames": self.frames, "sequences": self.sequences,
                             "samples": len(self.samples), **self.extra}
        if self.warning:
            d["warning"] = self.warning
        return d


# ---- frames -------------------------------------------------------------------------------------------------------

def ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except (ImportError, RuntimeError):
        exe = shutil.which("ffmpeg")
        if exe is None:
            raise CalibrationError("reading --calibration frames needs ffmpeg: pip install imageio-ffmpeg "
                                   "(or install ffmpeg)") from None
        return exe


def _scale_filter(pre: Preprocess) -> str:
    h, w = pre.size
    if pre.resize_shorter:
        s = pre.resize_shorter
        scale = f"scale='if(gt(iw,ih),-2,{s})':'if(gt(iw,ih),{s},-2)':flags=bilinear"
    else:
        scale = f"scale={w}:{h}:force_original_aspect_ratio=increase:flags=bilinear"
    return f"{scale},crop={w}:{h}"


def _decode(path: Path, pre: Preprocess, count: int, *, stride: int = 1) -> np.ndarray:
    """Up to ``count`` RGB uint8 frames ``[n, H, W, 3]`` of an image or video, every ``stride``-th frame."""
    h, w = pre.size
    vf = (f"select='not(mod(n\\,{stride}))'," if stride > 1 else "") + _scale_filter(pre)
    cmd = [ffmpeg_exe(), "-v", "error", "-i", str(path), "-an", "-vf", vf, "-fps_mode", "passthrough",
           "-frames:v", str(count), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    p = subprocess.run(cmd, capture_output=True, timeout=600)
    if p.returncode != 0:
        raise CalibrationError(f"cannot read {path} with ffmpeg: {p.stderr.decode(errors='replace')[-400:]}")
    n = len(p.stdout) // (h * w * 3)
    return np.frombuffer(p.stdout, np.uint8)[: n * h * w * 3].reshape(n, h, w, 3).copy()


def read_frames(source: str | Path, pre: Preprocess, *, count: int) -> np.ndarray:
    """Up to ``count`` frames ``[n, H, W, 3]`` (RGB uint8, at the model's size) from a folder of images or a video
    (the manifest's ``frame_stride`` applied)."""
    path = Path(source)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise CalibrationError(f"--calibration folder {path} holds no images "
                                   f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        return np.concatenate([_decode(p, pre, 1) for p in images[:count]])
    if not path.is_file():
        raise CalibrationError(f"--calibration {path}: no such file or folder")
    frames = _decode(path, pre, count, stride=max(1, pre.frame_stride))
    if len(frames) == 0:
        raise CalibrationError(f"--calibration {path}: no frames decoded")
    return frames


Sequences = list[tuple[np.ndarray, int]]  # (uint8 frames [n, H, W, 3], record every k-th step)


def _fallback(entry: ModelEntry | None, pre: Preprocess, *, streaming: bool, frames: int, count: int
              ) -> tuple[Sequences, str, str]:
    """(uint8 sequences, source description, warning) when no ``--calibration`` was given."""
    h, w = pre.size
    if entry is not None and entry.labels == "motion7.txt" and h == w:
        from stexport import motion

        if not streaming:
            clips, _ = motion.motion_clips(range(count), split="train", frames=frames, size=h)
            src = f"motion7 train split, clips 0..{count - 1} ({frames} frames each)"
            return [(c, 1) for c in clips], src, _motion7_warning(src)
        # half the samples: short clips from zero state (as the models are trained and evaluated); half: one long
        # stream of further clips back to back, every STREAM_STRIDE-th step
        short = max(1, count // 2 // MOTION7_FRAMES)
        long_clips = max(1, -(-(count - short * MOTION7_FRAMES) * STREAM_STRIDE // MOTION7_FRAMES))
        clips, _ = motion.motion_clips(range(short + long_clips), split="train", frames=MOTION7_FRAMES, size=h)
        stream = np.concatenate(list(clips[short:]))
        src = (f"motion7 train split: clips 0..{short - 1} from zero state, then clips {short}.."
               f"{short + long_clips - 1} as one {len(stream)}-frame stream sampled every {STREAM_STRIDE}rd frame")
        return [*((c, 1) for c in clips[:short]), (stream, STREAM_STRIDE)], src, _motion7_warning(src)
    n = count if streaming else count * frames
    src = f"{n} synthetic frames (stexport.frames.synthetic_frames)"
    return [(synthetic_frames(n, h, w, seed=1), 1)], src, (
        f"no --calibration given: calibrating int8 on {src}, not real video; the quantized model may lose "
        "accuracy on camera frames -- pass --calibration DIR_OR_VIDEO with representative frames")


def _motion7_warning(src: str) -> str:
    return (f"no --calibration given: calibrating int8 on the {src}; pass --calibration DIR_OR_VIDEO with frames "
            "like the ones the app will see")


def calibration_sequences(source: str | Path | None, entry: ModelEntry | None, pre: Preprocess, *, streaming: bool,
                          frames: int, count: int) -> tuple[Sequences, str, str | None]:
    """(uint8 frame sequences with the step stride at which each is sampled, source description, warning or None)
    for calibration. ``frames``: the clip length of a clip-form export; ``count``: samples (stream) or clips (clip
    form) wanted. A video or image folder is one stream of up to ``count * STREAM_STRIDE`` frames."""
    if source is None:
        return _fallback(entry, pre, streaming=streaming, frames=frames, count=count)
    want = count * STREAM_STRIDE if streaming else count * frames
    got = read_frames(source, pre, count=want)
    if not streaming and len(got) < frames:
        raise CalibrationError(f"--calibration {source}: {len(got)} frame(s), a clip needs {frames}")
    stride = STREAM_STRIDE if streaming and len(got) >= count * STREAM_STRIDE else 1
    return [(got, stride)], f"{source} ({len(got)} frames, every {stride} sampled)", None


def build_calibration(run: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], spec: IOSpec,
                      pre: Preprocess, *, source: str | Path | None, entry: ModelEntry | None,
                      count: int | None = None) -> Calibration:
    """Calibration samples for ``spec``'s graph; ``run`` is the float reference (it produces the states fed to
    the next step)."""
    streaming = spec.form == "stream"
    t = 1 if streaming else _clip_frames(spec)
    count = count or (default_stream_samples(spec) if streaming else CLIP_COUNT)
    seqs, desc, warning = calibration_sequences(source, entry, pre, streaming=streaming, frames=t, count=count)
    samples = SampleStore(sum(len(seq) // stride if streaming else len(seq) // t for seq, stride in seqs))
    for seq, stride in seqs:
        x = preprocess(seq, pre)
        if streaming:
            state = spec.zero_state()
            for i in range(x.shape[0]):
                feeds = {"frame": x[i:i + 1].contiguous().numpy(), **state}
                if (i + 1) % stride == 0:
                    samples.append(feeds)
                out = run(feeds)
                state = {s.name: np.asarray(out[s.output], np.float32) for s in spec.states}
        else:
            from stexport.models import pack_clip

            for i in range(0, x.shape[0] - t + 1, t):
                clip = x[i:i + t].transpose(0, 1).unsqueeze(0)
                samples.append({"clip": pack_clip(clip, spec.inputs[0].layout).contiguous().numpy()})
    n_frames = sum(len(s) for s, _ in seqs)
    return Calibration(samples, desc, n_frames, len(seqs), warning)


def default_stream_samples(spec: IOSpec) -> int:
    """`STREAM_FRAMES`, or half of it when that many of ``spec``'s samples would pass `STREAM_SAMPLES_BYTES`."""
    sample = sum(int(np.prod(i.shape)) * np.dtype(i.dtype).itemsize for i in spec.inputs)
    return STREAM_FRAMES if STREAM_FRAMES * sample <= STREAM_SAMPLES_BYTES else STREAM_FRAMES // 2


def _clip_frames(spec: IOSpec) -> int:
    shape, layout = spec.inputs[0].shape, spec.inputs[0].layout
    return int(shape[2]) if layout == "NCTHW" else int(shape[1]) // 3


# ---- activation ranges: the percentile rule ------------------------------------------------------------------------

#: int8 activation ranges (LiteRT, ExecuTorch, ONNX Runtime): this percentile of the values seen in calibration (and
#: its mirror), not their extremes. A few outliers stretch a per-tensor int8 scale over the whole range and leave the
#: bulk of the values a handful of levels (MoViNet's depthwise activations); a range set by the extremes of a few
#: calibration samples also moves with whichever samples were drawn.
RANGE_PERCENTILE = 99.99
#: values of one tensor sampled per calibration sample for its percentiles (all of them when it has fewer)
VALUES_PER_SAMPLE = 4096


def sample_values(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most `VALUES_PER_SAMPLE` of the flattened ``values``, drawn without replacement."""
    v = np.asarray(values).ravel()
    return v if v.size <= VALUES_PER_SAMPLE else rng.choice(v, VALUES_PER_SAMPLE, replace=False)


class PercentileRange:
    """The `RANGE_PERCENTILE` percentiles (low and high) of at most ``most`` values that arrive in parts, holding
    only the ``k`` smallest and ``k`` largest of each part: ``np.percentile`` reads just the two order statistics
    next to each percentile's position, and those lie among the ``k`` extremes of the whole, which lie among each
    part's ``k`` extremes. Exactly ``np.percentile`` of all the values, in ``2 k`` values a part (110 of 4096 for
    128 samples) instead of all of them. Past ``most`` values the tails would be too short: that is an error."""

    def __init__(self, most: int) -> None:
        self.most = most
        self.k = int((most - 1) * (100 - RANGE_PERCENTILE) / 100) + 3  # a tail holding both order statistics
        self.n = 0
        self.kept: list[np.ndarray] = []

    def add(self, values: np.ndarray) -> None:
        k = self.k
        self.n += values.size
        if values.size > 2 * k:
            part = np.partition(values, (k - 1, values.size - k))
            values = np.concatenate((part[:k], part[-k:]))
        self.kept.append(values)

    def percentiles(self) -> tuple[float, float]:
        if self.n > self.most:
            raise ValueError(f"PercentileRange({self.most}) was given {self.n} values")
        kept = np.sort(np.concatenate(self.kept))
        if kept.size < self.n:  # the middle, never read, stands in as copies of the k-th smallest value
            k = self.k
            kept = np.concatenate((kept[:k], np.full(self.n - 2 * k, kept[k - 1], kept.dtype), kept[-k:]))
        lo, hi = np.percentile(kept, [100 - RANGE_PERCENTILE, RANGE_PERCENTILE])
        return float(lo), float(hi)


def percentile_ranges(per_sample: Iterable[Mapping[str, np.ndarray]], names: Sequence[str], samples: int, *,
                      full: Collection[str] = ()) -> dict[str, tuple[float, float]]:
    """Each named tensor's (low, high) range over ``samples`` calibration samples, 0 kept inside: the
    `RANGE_PERCENTILE` percentiles of its values (`PercentileRange` of `sample_values` of each sample, drawn in
    ``names`` order from one seeded generator), or, for the names in ``full``, its min and max. ``per_sample``
    yields each sample's tensors by name."""
    tails = {n: PercentileRange(samples * VALUES_PER_SAMPLE) for n in names if n not in full}
    lo, hi = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    rng = np.random.default_rng(0)
    for tensors in per_sample:
        for n in names:
            if n in tails:
                tails[n].add(sample_values(tensors[n], rng))
            else:
                lo[n], hi[n] = min(lo[n], float(np.min(tensors[n]))), max(hi[n], float(np.max(tensors[n])))
    for n, tail in tails.items():
        low, high = tail.percentiles()
        lo[n], hi[n] = min(low, 0.0), max(high, 0.0)
    return {n: (lo[n], hi[n]) for n in names}


def histogram_percentiles(counts: np.ndarray, lo: float, hi: float) -> tuple[float, float]:
    """The `RANGE_PERCENTILE` percentiles (low, high) of values counted in ``len(counts)`` equal bins over
    ``[lo, hi]``: the outer edges of the bins that hold them (at most one bin wider than the exact percentiles)."""
    counts = np.asarray(counts, np.float64)
    cdf = np.cumsum(counts) / max(float(counts.sum()), 1e-30)
    edges = np.linspace(lo, hi, counts.size + 1)
    first = int(np.searchsorted(cdf, (100 - RANGE_PERCENTILE) / 100, side="left"))
    last = int(np.searchsorted(cdf, RANGE_PERCENTILE / 100, side="left"))
    return float(edges[first]), float(edges[min(last, counts.size - 1) + 1])


# ---- the state-update path ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    """One op of a graph in any format: name, op type, input and output tensor names."""

    name: str
    op: str
    inputs: Sequence[str]
    outputs: Sequence[str]


def state_path(nodes: Iterable[Node], state_inputs: Iterable[str], state_outputs: Iterable[str],
               weighted: Callable[[str], bool]) -> set[str]:
    """Names of the nodes on a path from a state input tensor to a state output tensor that goes through no
    weighted op (``weighted(op_type)``): the state-update arithmetic a quantized export keeps in float32."""
    nodes = list(nodes)
    consumers: dict[str, list[Node]] = {}
    producer: dict[str, Node] = {}
    for n in nodes:
        for t in n.inputs:
            consumers.setdefault(t, []).append(n)
        for t in n.outputs:
            producer[t] = n
    forward = _reach(state_inputs, lambda t: consumers.get(t, []), lambda n: n.outputs, weighted)
    backward = _reach(state_outputs, lambda t: [producer[t]] if t in producer else [], lambda n: n.inputs, weighted)
    return forward & backward


def _reach(starts: Iterable[str], nodes_at: Callable[[str], Sequence[Node]], onward: Callable[[Node], Sequence[str]],
           weighted: Callable[[str], bool]) -> set[str]:
    """Names of the nodes with no weights reachable from the tensors ``starts``: ``nodes_at(tensor)`` gives the
    nodes one step on, ``onward(node)`` the tensors beyond a node (its outputs walking forward, inputs backward)."""
    found: set[str] = set()
    todo = list(starts)
    seen = set(todo)
    while todo:
        for n in nodes_at(todo.pop()):
            if weighted(n.op) or n.name in found:
                continue
            found.add(n.name)
            for t in onward(n):
                if t not in seen:
                    seen.add(t)
                    todo.append(t)
    return found
