"""Frames of a video file or an image folder, decoded by ffmpeg (the imageio-ffmpeg wheel's binary, else
``ffmpeg`` on PATH) and brought to the model's input as the manifest says: ``fps`` resampling when set, every
``frame_stride``-th frame, shorter side scaled (to ``resize_shorter``, else to cover the input), centre crop.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stexport.calibration import IMAGE_SUFFIXES, CalibrationError, _scale_filter, ffmpeg_exe
from stexport.errors import MissingExtraError, StexportError
from stexport.models._registry import Preprocess


class VideoError(StexportError):
    """A video or image folder that cannot be decoded."""


class MissingDecoderError(MissingExtraError):
    """No ffmpeg: neither the imageio-ffmpeg wheel nor ``ffmpeg`` on PATH."""

    def __init__(self) -> None:
        StexportError.__init__(self, "decoding video needs ffmpeg, which is not installed. Install it with: "
                                     "pip install 'stexport[video]' (or put ffmpeg on PATH)")


def _ffmpeg() -> str:
    try:
        return ffmpeg_exe()
    except CalibrationError:
        raise MissingDecoderError() from None


@dataclass(frozen=True)
class Source:
    """What will be decoded: the files (one video, or the images of a folder in name order) and, when ffmpeg can
    tell, about how many frames come out."""

    files: tuple[Path, ...]
    is_video: bool
    frames_estimate: int | None


def open_source(path: str | Path, pre: Preprocess) -> Source:
    """A video file or a folder of images; `VideoError` naming the path otherwise."""
    p = Path(path)
    if p.is_dir():
        images = tuple(sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES))
        if not images:
            raise VideoError(f"{p} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}) and is not a video")
        return Source(images, False, len(images))
    if not p.is_file():
        raise VideoError(f"{p}: no such video file or image folder")
    return Source((p,), True, _estimate(p, pre))


def _estimate(path: Path, pre: Preprocess) -> int | None:
    """Frames after fps/stride, from the container's duration and rate (None when unknown)."""
    try:
        import imageio_ffmpeg

        gen = imageio_ffmpeg.read_frames(str(path))
        meta = next(gen)
        gen.close()
    except (ImportError, OSError, RuntimeError, StopIteration):
        return None
    fps = pre.fps or meta.get("fps") or 0
    duration = meta.get("duration") or 0
    n = int(round(float(fps) * float(duration)))
    return max(1, -(-n // max(1, pre.frame_stride))) if n > 0 else None


def _filters(pre: Preprocess, *, video: bool) -> str:
    parts = []
    if video and pre.fps:
        parts.append(f"fps={pre.fps:g}")
    if video and pre.frame_stride > 1:
        parts.append(f"select='not(mod(n\\,{pre.frame_stride}))'")
    parts.append(_scale_filter(pre))
    return ",".join(parts)


def _decode(path: Path, pre: Preprocess, *, video: bool) -> Iterator[np.ndarray]:
    h, w = pre.size
    size = h * w * 3
    cmd = [_ffmpeg(), "-v", "error", "-i", str(path), "-an", "-vf", _filters(pre, video=video),
           "-fps_mode", "passthrough", *([] if video else ["-frames:v", "1"]),
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    n = 0
    try:
        while len(buf := proc.stdout.read(size)) == size:
            n += 1
            yield np.frombuffer(buf, np.uint8).reshape(h, w, 3)
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        code = proc.wait()
    if code != 0 or n == 0:
        raise VideoError(f"ffmpeg cannot decode {path}: {err.strip()[-300:] or 'no frames'}")


def frames(source: Source, pre: Preprocess) -> Iterator[np.ndarray]:
    """RGB uint8 frames ``[H, W, 3]`` at the model's size, one at a time, in order."""
    for f in source.files:
        yield from _decode(f, pre, video=source.is_video)
