"""``stexport --model M --target T [...]``, ``stexport --list`` and ``stexport bench ...``.

Exit codes: 0 done; 1 export or parity failure; 2 bad usage (unknown model/target, bad option);
3 a target's optional extra is not installed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stexport import __version__


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stexport",
        description="Export a video-recognition model to a mobile format, verified against PyTorch.",
        epilog="Example: stexport --model movinet_a0_stream --target tflite. "
               "Benchmarks: stexport bench --help.")
    p.add_argument("--model", "-m", help="registered model name (see --list)")
    p.add_argument("--target", "-t", help="onnx, tflite, coreml or executorch")
    p.add_argument("--checkpoint", "-c", help="the authors' released checkpoint file, in its original layout")
    p.add_argument("--precision", default="fp32", help="fp32 (default); see --list for each target's precisions")
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
    from stexport.targets import TARGETS

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


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["bench"]:
        from stexport.benchmarks.cli import main as bench_main

        return bench_main(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.list:
        _print_list()
        return 0
    if not args.model or not args.target:
        parser.print_usage(sys.stderr)
        print("stexport: error: --model and --target are required (or --list)", file=sys.stderr)
        return 2
    from stexport.errors import MissingExtraError, StexportError
    from stexport.models import CheckpointMismatchError, UnknownNameError, get_entry
    from stexport.targets import get_target

    try:
        get_target(args.target)
        get_entry(args.model)
    except UnknownNameError as e:
        print(f"stexport: error: {e}", file=sys.stderr)
        return 2
    from stexport.pipeline import export

    try:
        path = export(args.model, target=args.target, out=args.out, precision=args.precision,
                      checkpoint=args.checkpoint, verify=not args.no_verify,
                      form="stream" if args.stream else None, steps=args.steps, quiet=not args.verbose)
    except MissingExtraError as e:
        print(f"stexport: error: {e}", file=sys.stderr)
        return 3
    except (CheckpointMismatchError, FileNotFoundError, StexportError) as e:
        print(f"stexport: error: {e}", file=sys.stderr)
        print("stexport: no bundle was written", file=sys.stderr)
        return 2 if isinstance(e, StexportError) and "not available for target" in str(e) else 1
    print(f"Wrote {path}")
    for f in sorted(path.iterdir()):
        print(f"  {f.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
