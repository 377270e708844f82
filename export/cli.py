"""``stexport --model M --target T [...]``, ``stexport --list``, ``stexport bench ...`` and the bundle commands
``stexport inspect|verify|predict BUNDLE ...`` (`stexport.bundle_cli`).

Exit codes: 0 done; 1 export, parity or checkpoint failure; 2 bad usage (unknown model/target, a bad ``--set``
value or key); 3 a target's optional extra is not installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from stexport import __version__

BUNDLE_COMMANDS = ("inspect", "verify", "predict")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stexport",
        description="Export a video-recognition model to a mobile format, verified against PyTorch.",
        epilog="Example: stexport --model movinet_a0_stream --target tflite. "
               "Bundles: stexport inspect|verify|predict BUNDLE ... (--help on each). "
               "Benchmarks: stexport bench --help.")
    p.add_argument("--model", "-m", help="registered model name (see --list)")
    p.add_argument("--target", "-t", help="onnx, tflite, coreml or executorch")
    p.add_argument("--checkpoint", "-c", help="the authors' released checkpoint file, in its original layout")
    p.add_argument("--precision", "-p", default="fp32",
                   help="fp32 (default), fp16, int8-dynamic or int8; see --list for each target's precisions. "
                        "Frames, states and logits stay float32 at the boundary in every precision (see --io)")
    p.add_argument("--io", default="float32", metavar="float32|int8",
                   help="the boundary's dtypes: float32 (default) or int8 (tflite, --precision int8, stream form): "
                        "frame uint8 [1, H, W, 3] RGB with the preprocessing in the graph, buffer states int8 "
                        "(scale, zero point and zero-point init in the manifest), running means and logits float32")
    p.add_argument("--calibration", metavar="DIR_OR_VIDEO",
                   help="int8: a folder of images or a video with representative frames (default: motion7 or "
                        "synthetic frames, with a warning)")
    p.add_argument("--calibration-frames", type=int, metavar="N",
                   help="int8: frames to step (stream form, default 256; 128 for a model whose 256 samples, every "
                        "state in each, would pass 8 GiB) or clips (clip form, default 16)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option, repeatable: input_size=224, num_frames=8, pool_window=300 (MoViNet "
                        "stream: cumulative pools become running means over the last N frames), num_classes=...")
    p.add_argument("--out", "-o", default="out", help="output folder (bundle goes to OUT/MODEL/TARGET/)")
    p.add_argument("--no-verify", action="store_true", help="skip the parity gate (recorded in the manifest)")
    p.add_argument("--stream", action="store_true",
                   help="clip models: export the ring-buffer stream form (frame + frames state) instead of the clip")
    p.add_argument("--steps", type=int, default=16, help="frames the parity gate streams (default 16)")
    p.add_argument("--verbose", "-v", action="store_true", help="show the converters' own output")
    p.add_argument("--list", action="store_true", help="list models, targets and installed extras")
    p.add_argument("--version", action="version", version=f"stexport {__version__}")
    return p


def _print_list() -> None:
    from stexport.models import entries
    from stexport.targets import PRECISIONS, TARGETS

    rows = [("model", "input", "frames", "classes", "kind", "dataset")]
    for e in sorted(entries().values(), key=lambda e: e.name):
        kind = "stream (causal)" if e.streaming else "clip (+ring buffer)"
        rows.append((e.name, f"{e.input_size}x{e.input_size}", str(e.num_frames), str(e.num_classes), kind,
                     e.dataset))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("Models:")
    for r in rows:
        print("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print("\nTargets:")
    for t in TARGETS.values():
        state = "installed" if t.installed() else f"missing: pip install 'stexport[{t.extra}]'"
        print(f"  {t.name:<11} {t.suffix:<10} precisions {','.join(t.precisions):<28} {state}")
        print(f"  {'':<11} {t.description}")
    print("\nPrecisions (--precision; frames, states and logits stay float32 at the boundary unless --io int8):")
    for name, what in PRECISIONS.items():
        offered = ", ".join(t.name for t in TARGETS.values() if name in t.precisions)
        print(f"  {name:<13} {what}")
        print(f"  {'':<13} targets: {offered}")


def _silence_stderr_at_exit() -> None:
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["bench"]:
        from stexport.benchmarks.cli import main as bench_main

        return bench_main(args_list[1:])
    if args_list[:1] and args_list[0] in BUNDLE_COMMANDS:
        from stexport.bundle_cli import main as bundle_main

        code = bundle_main(args_list[0], args_list[1:])
        if argv is None:  # the console command: the runtimes' teardown logs at exit stay out of the terminal
            _silence_stderr_at_exit()
        return code
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.list:
        _print_list()
        return 0
    if not args.model or not args.target:
        parser.print_usage(sys.stderr)
        print("stexport: error: --model and --target are required (or --list)", file=sys.stderr)
        return 2
    if argv is None:
        from stexport.child import export_in_child, in_child

        if not in_child():  # the console command: a native crash in the converter becomes a clear error
            return export_in_child(args_list, final=Path(args.out) / args.model / args.target)
    from stexport.boundary import check_io
    from stexport.errors import MissingExtraError, StexportError, UnsupportedPrecisionError
    from stexport.models import CheckpointMismatchError, UnknownNameError, get_entry
    from stexport.options import OptionError, parse_options
    from stexport.targets import check_precision, get_target

    try:
        check_precision(get_target(args.target), args.precision)
        entry = get_entry(args.model)
        check_io(args.io, target=args.target, precision=args.precision,
                 form="stream" if entry.streaming or args.stream else "clip")
        options = parse_options(args.model, args.options)
    except (UnknownNameError, UnsupportedPrecisionError, OptionError) as e:
        print(f"stexport: error: {e}", file=sys.stderr)
        return 2
    from stexport.pipeline import export

    try:
        path = export(args.model, target=args.target, out=args.out, precision=args.precision,
                      checkpoint=args.checkpoint, verify=not args.no_verify,
                      form="stream" if args.stream else None, steps=args.steps, quiet=not args.verbose,
                      calibration=args.calibration, calibration_frames=args.calibration_frames, options=options,
                      io=args.io)
    except MissingExtraError as e:
        print(f"stexport: error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("stexport: interrupted; no bundle was written", file=sys.stderr)
        return 130
    except (CheckpointMismatchError, FileNotFoundError, StexportError) as e:
        print(f"stexport: error: {e}", file=sys.stderr)
        print("stexport: no bundle was written", file=sys.stderr)
        return 2 if isinstance(e, UnsupportedPrecisionError) else 1
    except Exception as e:  # a converter or model failure: one line, the traceback only with --verbose
        if args.verbose:
            raise
        print(f"stexport: error: {type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
              f" (--verbose shows the traceback)", file=sys.stderr)
        print("stexport: no bundle was written", file=sys.stderr)
        return 1
    print(f"Wrote {path}")
    for f in sorted(path.iterdir()):
        print(f"  {f.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
