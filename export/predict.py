"""``stexport predict``: a video (or an image folder) through a bundle, top-K labels as the frames go by.

Stream form: every decoded frame is one step (the state carried in the runtime); a prediction every ``every``
frames and at the last frame. Clip form: a window of the model's ``num_frames`` frames slides with stride
``every``; each window is one prediction, reported at its last frame. Frames are preprocessed exactly as the
manifest says (`stexport.video` decodes and crops, `stexport.frames.preprocess` normalises).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stexport.integrity import read_manifest


@dataclass(frozen=True)
class Prediction:
    """The top ``k`` labels after frame ``frame`` (0-based, in decoded frames), best first, softmax scores."""

    frame: int
    top: list[tuple[str, float]]

    def to_json(self) -> dict[str, Any]:
        return {"frame": self.frame, "top": [{"label": label, "score": round(score, 6)} for label, score in self.top]}


def top_k(logits: np.ndarray, labels: list[str], k: int) -> list[tuple[str, float]]:
    """Softmax of ``logits [1, K]`` (or ``[K]``), the ``k`` best as (label, probability), best first."""
    z = np.asarray(logits, np.float64).reshape(-1)
    p = np.exp(z - z.max())
    p /= p.sum()
    best = np.argsort(-p, kind="stable")[:k]
    return [(labels[i] if i < len(labels) else str(i), float(p[i])) for i in best]


def read_labels(bundle: Path, manifest: dict[str, Any]) -> list[str]:
    path = bundle / manifest.get("labels", {}).get("file", "labels.txt")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def predict(bundle: str | Path, source: str | Path, *, every: int = 1, top: int = 5, threads: int = 1,
            progress: Any = None) -> Iterator[Prediction]:
    """Predictions of ``bundle`` over the frames of ``source`` (see the module docstring). ``progress(done, total)``
    is called after each decoded frame (``total`` None when unknown)."""
    import torch

    from stexport.boundary import frame_feed
    from stexport.frames import preprocess
    from stexport.models import pack_clip
    from stexport.quiet import captured_output
    from stexport.streaming import open_stream, preprocess_of
    from stexport.video import frames, open_source

    folder = Path(bundle)
    manifest = read_manifest(folder)
    labels = read_labels(folder, manifest)
    pre = preprocess_of(manifest)
    src = open_source(source, pre)
    with captured_output():  # the runtime's start-up chatter
        stream = open_stream(folder, threads=threads)
    clip = manifest["form"] == "clip"
    t = int(manifest["model"]["num_frames"])
    layout = next((i.get("layout", "") for i in manifest["inputs"] if i["name"] == "clip"), "")
    window: deque[torch.Tensor] = deque(maxlen=t)
    pending: Prediction | None = None
    i = -1
    for i, rgb in enumerate(frames(src, pre)):
        if clip:
            window.append(preprocess(rgb[None], pre)[0])  # [3, H, W]
            if len(window) < t or (i - t + 1) % every:
                if progress:
                    progress(i + 1, src.frames_estimate)
                continue
            packed = pack_clip(torch.stack(tuple(window), 1).unsqueeze(0), layout)
            logits = stream.step({"clip": packed.numpy()})
        else:
            logits = stream.step({"frame": frame_feed(rgb, stream.spec, pre)})  # float32 or uint8, per manifest
        pred = Prediction(i, top_k(logits, labels, top))
        if progress:
            progress(i + 1, src.frames_estimate)
        if clip or (i + 1) % every == 0:
            pending = None
            yield pred
        else:
            pending = pred
    if pending is not None:
        yield pending
    with captured_output():  # the runtime's teardown chatter
        del stream
    if clip and 0 <= i < t - 1:
        from stexport.errors import StexportError

        raise StexportError(f"{source} gave {i + 1} frame(s); this clip model needs at least {t}")
