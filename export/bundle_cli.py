"""``stexport inspect BUNDLE``, ``stexport verify BUNDLE`` and ``stexport predict BUNDLE VIDEO_OR_FOLDER``.

Exit codes: 0 ok; 1 verify found a difference, the artifact does not match its sha256, or the bundle or video
cannot be read; 2 bad usage; 3 the target's runtime extra is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

COMMANDS = ("inspect", "verify", "predict")


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"stexport {command}")
    p.add_argument("bundle", help="a bundle folder written by stexport (<out>/<model>/<target>/)")
    if command == "inspect":
        p.description = "Show a bundle's contract: inputs, outputs, states, preprocessing, precision, parity."
    elif command == "verify":
        p.description = ("Replay golden.json through the artifact in this machine's runtime; exit 1 when an output "
                         "differs beyond the manifest's tolerance (Core ML off macOS: spec checked only).")
        p.add_argument("--threads", type=_positive, default=1, help="runtime threads (default 1)")
    else:
        p.description = ("Run a video file (or a folder of images) through the bundle, preprocessed as the manifest "
                         "says, and print the top labels.")
        p.add_argument("video", metavar="VIDEO_OR_FOLDER", help="a video file or a folder of images (name order)")
        p.add_argument("--every", type=_positive, default=1, metavar="N",
                       help="report every N frames (stream form); window stride (clip form). Default 1")
        p.add_argument("--top", type=_positive, default=5, metavar="K", help="labels per report (default 5)")
        p.add_argument("--json", action="store_true",
                       help='one JSON object per report on stdout: {"frame": i, "top": [{"label", "score"}...]}')
        p.add_argument("--threads", type=_positive, default=1, help="runtime threads (default 1)")
    return p


def _positive(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


class _Bar:
    """A one-line progress bar on stderr."""

    def __init__(self, width: int = 30) -> None:
        self.width, self.shown, self.text = width, False, ""
        self.t0: float | None = None

    def __call__(self, done: int, total: int | None) -> None:
        now = time.perf_counter()
        self.t0 = now if self.t0 is None else self.t0
        rate = (done - 1) / max(now - self.t0, 1e-9)
        if total and total >= done:
            n = int(self.width * done / total)
            bar = f"[{'#' * n}{'.' * (self.width - n)}] {done}/{total} frames"
        else:
            bar = f"[{done} frames]"
        self.text = f"{bar}  {rate:.0f} frames/s"
        print(f"\r{self.text}", end="", file=sys.stderr, flush=True)
        self.shown = True

    def clear(self) -> None:
        """Blank the bar's line (a report is printed in its place; the bar redraws after it)."""
        if self.shown:
            print("\r" + " " * len(self.text) + "\r", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.shown:
            print(file=sys.stderr, flush=True)


def _inspect(args: argparse.Namespace) -> int:
    from stexport.bundle_inspect import describe

    text, ok = describe(args.bundle)
    print(text)
    return 0 if ok else 1


def _verify(args: argparse.Namespace) -> int:
    from stexport.bundle_verify import verify

    v = verify(args.bundle, threads=args.threads)
    if not v.executed:
        print(f"verify {args.bundle}: {v.note}")
        return 0
    for s in v.steps:
        print(f"step {s.step}: {s.output} max abs err {s.max_abs_err:.3g} (tol {s.tolerance:.3g}) "
              f"top-1 {s.top1}{'' if s.top1 == s.top1_expected else f' (golden: {s.top1_expected})'}  "
              f"{'ok' if s.passed else 'DIFFERS'}")
    bad = v.first_failure
    if bad is not None:
        print(f"stexport: verify failed: step {bad.step}, output {bad.output!r} differs from golden.json by "
              f"{bad.max_abs_err:.3g} > tolerance {bad.tolerance:.3g} ({v.runtime})", file=sys.stderr)
        return 1
    print(f"verified: {len(v.steps)} golden step(s) within tolerance in {v.runtime}; sha256 matches")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from stexport.predict import predict

    bar = _Bar()
    try:
        for p in predict(args.bundle, args.video, every=args.every, top=args.top, threads=args.threads,
                         progress=bar):
            if args.json:
                print(json.dumps(p.to_json()), flush=True)
            else:
                bar.clear()
                print(f"frame {p.frame:>5}  " + "  ".join(f"{label} {score:.3f}" for label, score in p.top),
                      flush=True)
    finally:
        bar.close()
    return 0


def main(command: str, argv: Sequence[str]) -> int:
    from stexport.errors import MissingExtraError, StexportError

    args = _parser(command).parse_args(list(argv))
    run = {"inspect": _inspect, "verify": _verify, "predict": _predict}[command]
    try:
        return run(args)
    except MissingExtraError as e:
        print(f"stexport {command}: error: {e}", file=sys.stderr)
        return 3
    except (StexportError, OSError, KeyError, ValueError) as e:
        msg = str(e) if not isinstance(e, KeyError) else f"the manifest lacks {e}; re-export the bundle"
        print(f"stexport {command}: error: {msg}", file=sys.stderr)
        return 1
