"""One export, stage by stage: build -> load -> export -> verify -> write (atomic bundle)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stexport.boundary import FoldedPreprocess, check_io, dequantized, integer_spec, raw_calibration, raw_frame_spec
from stexport.bundle import staged_bundle
from stexport.calibration import Calibration, build_calibration
from stexport.errors import ParityError, StexportError
from stexport.frames import preprocess, synthetic_frames
from stexport.integrity import artifact_sha256
from stexport.manifest import build_golden, build_manifest, model_facts
from stexport.models import ModelEntry, Preprocess, VideoModel, create_model, get_entry, pack_clip, preprocess_for
from stexport.parity import compare, feeds_for, run_loop, stream_vs_clip, torch_runner
from stexport.quiet import captured_output
from stexport.spec import Form, GraphModule, IOSpec, build_spec
from stexport.targets import CALIBRATED, PRECISIONS, check_precision, get_target

Progress = Callable[[str], None]
STAGES = ("build", "load", "export", "verify", "write")


def stderr_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def _stage(progress: Progress, name: str, detail: str = "") -> Iterator[None]:
    i = STAGES.index(name) + 1
    t0 = time.perf_counter()
    progress(f"[{i}/{len(STAGES)}] {name:<6} {detail}".rstrip())
    yield
    progress(f"      {name} done in {time.perf_counter() - t0:.1f}s")


def _labels(entry: ModelEntry | None, num_classes: int) -> tuple[list[str], str]:
    if entry is not None and entry.labels:
        text = files("stexport").joinpath("labels", entry.labels).read_text(encoding="utf-8")
        labels = [line for line in text.splitlines() if line.strip()]
        if len(labels) == num_classes:
            return labels, entry.labels
    return [f"class_{i}" for i in range(num_classes)], "generated (class_<index>)"


def export(model: str | torch.nn.Module, *, target: str, out: str | Path = "out", precision: str = "fp32",
           checkpoint: str | Path | None = None, verify: bool = True, form: Form | None = None,
           steps: int = 16, threads: int = 1, progress: Progress | None = None, quiet: bool = True,
           calibration: str | Path | None = None, calibration_frames: int | None = None,
           options: Mapping[str, Any] | None = None, io: str = "float32") -> Path:
    """Export and verify; returns the bundle folder ``<out>/<model>/<target>/``. See `stexport.export`.

    ``calibration``: a folder of images or a video whose frames calibrate ``precision="int8"`` (default: motion7
    or synthetic frames, with a warning); ``calibration_frames``: how many frames (stream) or clips (clip form).
    ``options``: model options for `create_model` (``input_size``, ``pool_window``, ...) of a model given by name;
    they are recorded in the manifest. ``io``: the boundary's dtypes, ``"float32"`` or ``"int8"`` (tflite int8
    stream form: uint8 frames, int8 buffer states; `stexport.boundary`)."""
    say = progress or stderr_progress
    tgt = get_target(target)
    check_precision(tgt, precision)
    check_io(io, target=target, precision=precision)
    if calibration is not None and precision not in CALIBRATED:
        raise StexportError(f"--calibration is used by precision int8 only, not {precision!r}")
    impl = tgt.load()  # a missing extra fails here, before any work

    with _stage(say, "build", model if isinstance(model, str) else type(model).__name__):
        if isinstance(model, str):
            name = model
            entry: ModelEntry | None = get_entry(name)
            module = create_model(name, **(options or {})) if checkpoint is None else None
        else:
            if options:
                raise StexportError("options apply to a model given by name; set them on the module instead")
            if not isinstance(model, VideoModel):
                raise StexportError(f"{type(model).__name__} is not a stexport model: subclass "
                                    "stexport.models.StreamModel or ClipModel (see stexport.models.VideoModel)")
            name = str(getattr(model, "registry_name", type(model).__name__.lower()))
            entry = _entry_or_none(name)
            module = model.eval()
    with _stage(say, "load", str(checkpoint) if checkpoint else "no checkpoint: parameters as built"):
        if module is None:
            module = create_model(name, checkpoint=checkpoint, **(options or {}))
        elif checkpoint is not None:
            from stexport.models import load_checkpoint

            if entry is None:
                raise StexportError(f"cannot load a released checkpoint into unregistered module {name!r}")
            load_checkpoint(module, checkpoint, entry)
    vm: VideoModel = module
    vm.refold()  # models that cache folded weights rebuild them from the (possibly just loaded) parameters
    # a step with a layout choice takes the target's (a copy if new); full int8: the op forms integer kernels run
    vm = vm.with_step_layout(tgt.step_layout, integer=precision in CALIBRATED)
    form = form or ("stream" if vm.streaming else "clip")
    check_io(io, target=target, precision=precision, form=form)
    spec = build_spec(vm, form=form)
    graph = GraphModule(vm, spec).eval()
    pre = preprocess_for(entry, vm.frame_size())
    # what is converted: the graph itself, or (integer boundary) the graph taking raw pixels
    conv_spec = raw_frame_spec(spec) if io == "int8" else spec
    conv_graph = GraphModule(vm, conv_spec, frame_in=FoldedPreprocess(pre)).eval() if io == "int8" else graph
    labels, label_source = _labels(entry, int(vm.num_classes))
    final = Path(out) / name / target
    artifact_name = f"{name}_{precision}{tgt.suffix}"

    with staged_bundle(final) as staging:
        artifact = staging / artifact_name
        with _stage(say, "export", f"{name} -> {target} ({precision}, {form} form)"):
            t0 = time.perf_counter()
            cal = None
            if precision in CALIBRATED:
                cal = build_calibration(torch_runner(graph), spec, pre, source=calibration, entry=entry,
                                        count=calibration_frames)
                say(f"      calibration: {len(cal.samples)} sample(s) from {cal.source}")
                if cal.warning:
                    say(f"      warning: {cal.warning}")
            conv_cal = raw_calibration(cal, pre) if io == "int8" and cal is not None else cal
            io_option = {"io": io} if io != "float32" else {}  # (only targets offering --io int8 take it)
            with captured_output(enabled=quiet):
                converter = impl.convert(conv_graph, conv_spec, artifact, precision=precision,
                                         metadata=artifact_metadata(name, spec, pre, entry), calibration=conv_cal,
                                         **io_option)
            export_seconds = time.perf_counter() - t0
            io_spec = integer_spec(spec, impl.boundary_details(artifact)) if io == "int8" else spec
            details = _precision_details(impl, artifact, io_spec, precision, converter.pop("precision", {}), cal)
        h, w = vm.frame_size()
        t = int(vm.num_frames)
        # a ring buffer is checked past the point where it wraps (T frames and a few more)
        n_frames = t if form == "clip" else steps if vm.streaming else max(steps, t + 2)
        frames_u8 = synthetic_frames(n_frames, h, w)
        data = preprocess(frames_u8, pre)
        if form == "clip":
            data = pack_clip(data.transpose(0, 1).unsqueeze(0), spec.inputs[0].layout)
        ref = run_loop(torch_runner(graph), spec, feeds_for(spec, data))
        with _stage(say, "verify", "parity gate" if verify else "skipped (--no-verify)"):
            if verify:
                with captured_output(enabled=quiet):
                    parity = _verify(impl, tgt.name, artifact, io_spec, ref, vm, data, precision, form, threads,
                                     frames_u8=frames_u8)
            else:
                parity = {"skipped": True, "reason": "--no-verify: the artifact was not compared with PyTorch"}
            if verify:
                say("      " + _parity_line(parity))
        with _stage(say, "write", str(final)):
            info = model_facts(vm, entry, name=name, form=form)
            if options:
                info["options"] = dict(options)
            size = _size(artifact)
            manifest = build_manifest(model_info=info, pre=pre, spec=io_spec, target=target, artifact=artifact_name,
                                      artifact_bytes=size, artifact_sha256=artifact_sha256(artifact),
                                      precision=precision, converter=converter, parity=parity,
                                      labels=label_source, export_seconds=export_seconds,
                                      precision_details=details, io=io)
            (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
            golden = build_golden(frames_u8=frames_u8, spec=io_spec, trace=ref, labels=labels)
            (staging / "golden.json").write_text(json.dumps(golden) + "\n")
            (staging / "labels.txt").write_text("\n".join(labels) + "\n")
            if verify and not parity["passed"]:
                raise ParityError(f"parity gate failed for {name} -> {target}: {_parity_line(parity)}")
    return final


def artifact_metadata(name: str, spec: IOSpec, pre: Preprocess, entry: ModelEntry | None) -> dict[str, str]:
    """Key facts embedded in the artifact itself (ONNX metadata_props, Core ML user_defined_metadata)."""
    return {
        "stexport.model": name,
        "stexport.form": spec.form,
        "stexport.inputs": ",".join(spec.input_names),
        "stexport.outputs": ",".join(spec.output_names),
        "stexport.states": json.dumps([s.to_json() for s in spec.states]),
        "stexport.preprocessing": json.dumps({"size": list(pre.size), "value_range": list(pre.value_range),
                                              "mean": list(pre.mean), "std": list(pre.std)}),
        "description": entry.description if entry and entry.description else f"{name} ({spec.form} form)",
    }


def _precision_details(impl: Any, artifact: Path, spec: IOSpec, precision: str, done: dict[str, Any],
                       cal: Calibration | None) -> dict[str, Any]:
    """What the precision means here, with the artifact's boundary dtypes read back and checked against the spec
    (states, frames and logits are float32 in every precision unless the boundary is integer, `stexport.boundary`)."""
    want = {t.name: t.dtype for t in (*spec.inputs, *spec.outputs)}
    got = impl.boundary_dtypes(artifact, spec)
    wrong = {n: got.get(n) for n in want if got.get(n) != want[n]}
    if wrong:
        raise StexportError(f"the {precision} artifact changed boundary dtypes: {wrong} (the contract has "
                            f"{sorted(set(want.values()))} at the boundary)")
    details: dict[str, Any] = {"name": precision, "summary": PRECISIONS[precision], **done,
                               "boundary_dtypes": "read back from the artifact; equal to inputs/outputs/states"}
    if cal is not None:
        details["calibration"] = cal.to_json()
    return details


def _entry_or_none(name: str) -> ModelEntry | None:
    try:
        return get_entry(name)
    except KeyError:
        return None


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _verify(impl: Any, target: str, artifact: Path, spec: IOSpec, ref: Any, model: VideoModel, data: torch.Tensor,
            precision: str, form: str, threads: int, *, frames_u8: np.ndarray) -> dict[str, Any]:
    """The parity gate. An integer boundary (uint8 ``frame``) is fed the raw frames and its integer outputs are
    dequantized with their scale and zero point before they are compared."""
    report: dict[str, Any] = {"target": target, "precision": precision, "form": form}
    if form == "stream":
        report["pytorch_stream_vs_clip"] = stream_vs_clip(model, data)
    try:
        runner = impl.Runner(artifact, spec, threads=threads)
    except RuntimeError as e:  # Core ML off macOS: the spec was checked at export
        if type(e).__name__ != "RuntimeUnavailable":
            raise
        report.update({"executed": False, "reason": str(e), "passed": True, "spec_checked": True})
        return report
    integer = spec.inputs[0].dtype == "uint8"
    feeds = [{"frame": frames_u8[i:i + 1]} for i in range(len(ref.inputs))] if integer else \
        [{k: v for k, v in s.items() if k in ("frame", "clip")} for s in ref.inputs]
    got = run_loop(runner.run, spec, feeds)
    if integer:
        got = dequantized(got, spec)
    report.update({"executed": True, "runtime": f"{runner.name} {runner.version}"})
    report.update(compare(spec, ref, got, precision=precision))
    stream_check = report.get("pytorch_stream_vs_clip")
    if stream_check is not None and not stream_check["passed"]:
        report["passed"] = False
    return report


def _parity_line(p: dict[str, Any]) -> str:
    if not p.get("executed", True):
        return f"not executed here ({p.get('reason')})"
    s = f"logits max abs err {p['max_abs_err']['logits']:.2g} (tol {p['tolerance']['logits_max_abs']:.2g}) over " \
        f"{p['steps']} step(s), top-1 agreement {p['top1_agreement']:.0%}"
    if p.get("precision", "fp32") != "fp32":
        s += f", logit SNR {p['logits_snr_db']:.1f} dB (min {p['tolerance']['logits_snr_db_min']:g})"
    if "pytorch_stream_vs_clip" in p:
        s += f"; PyTorch stream vs clip {p['pytorch_stream_vs_clip']['max_abs_err']:.2g}"
    if "warning" in p:
        s += f"\n      note: {p['warning']}"
    return s

