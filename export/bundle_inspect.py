"""``stexport inspect``: a bundle's contract as tables (inputs, outputs, states with shape, dtype, layout and init;
preprocessing; precision; the parity summary; the artifact's size and sha256)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stexport.integrity import artifact_sha256, read_manifest


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Left-aligned columns, two spaces apart."""
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    return [indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in (header, *rows)]


def _shape(s: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, s)) + "]"


def parity_summary(p: dict[str, Any]) -> str:
    """One line from the manifest's parity report."""
    if p.get("skipped"):
        return f"skipped ({p.get('reason', '--no-verify')})"
    if not p.get("executed", True):
        return f"spec checked, not executed ({p.get('reason', '')})"
    s = (f"{'passed' if p.get('passed') else 'FAILED'}: logits max abs err {p['max_abs_err']['logits']:.2g} "
         f"(tol {p['tolerance']['logits_max_abs']:.2g}) over {p['steps']} step(s), "
         f"top-1 agreement {p['top1_agreement']:.0%}")
    if "logits_snr_db" in p and p.get("precision", "fp32") != "fp32":
        s += f", logit SNR {p['logits_snr_db']:.1f} dB"
    if "runtime" in p:
        s += f"; {p['runtime']}"
    return s


def describe(bundle: str | Path) -> tuple[str, bool]:
    """(the report, whether the artifact's sha256 matches the manifest's)."""
    folder = Path(bundle)
    m = read_manifest(folder)
    model, art, pre = m["model"], m["artifact"], m["preprocessing"]
    path = folder / art["file"]
    got = artifact_sha256(path) if path.exists() else None
    ok = got is not None and got == art.get("sha256")
    check = ("matches the file" if ok else "MISSING FILE" if got is None else
             "no checksum recorded" if not art.get("sha256") else f"DIFFERS: the file hashes to {got}")
    state_names = {s["name"] for s in m["states"]}
    state_outputs = {s["output"] for s in m["states"]}
    fed = [t["name"] for t in m["inputs"] if t["name"] not in state_names]
    made = [t["name"] for t in m["outputs"] if t["name"] not in state_outputs]
    lines = [
        f"bundle     {folder}",
        f"model      {model['name']} ({model.get('family', '?')}), {m['form']} form, {model['num_classes']} classes, "
        f"{model['num_frames']} frames, {model.get('frames_per_step', 1)} frame(s) per step",
        f"target     {m['target']}" + (f" (signature {m['tflite']['signature']})" if "tflite" in m else "")
        + (f" (method {m['executorch']['method']}, inputs positional)" if "executorch" in m else ""),
        f"artifact   {art['file']}  {art['bytes'] / 1e6:.2f} MB ({art['bytes']:,} bytes)",
        f"sha256     {art.get('sha256', '-')} ({check})",
        f"precision  {m['precision']}: {m.get('precision_details', {}).get('summary', '')}".rstrip(": "),
        f"parity     {parity_summary(m.get('parity', {}))}",
        "",
        f"inputs (in this order: {', '.join(fed)}" + (", then every state input below)" if m["states"] else ")"),
        *table(("name", "shape", "dtype", "layout"),
               [(t["name"], _shape(t["shape"]), t.get("dtype", "float32"), t.get("layout", ""))
                for t in m["inputs"] if t["name"] not in state_names]),
        "",
        f"outputs (in this order: {', '.join(made)}" + (", then every state output below)" if m["states"] else ")"),
        *table(("name", "shape", "dtype", "layout"),
               [(t["name"], _shape(t["shape"]), t.get("dtype", "float32"), t.get("layout", ""))
                for t in m["outputs"] if t["name"] not in state_outputs]),
        "",
        f"states ({len(m['states'])}: feed each output back as its input for the next step)",
        *(table(("input", "output", "shape", "dtype", "layout", "init"),
                [(s["name"], s["output"], _shape(s["shape"]), s.get("dtype", "float32"), s.get("layout", ""),
                  _init(s)) for s in m["states"]]) if m["states"] else ["  none"]),
        "",
        "preprocessing",
        f"  size {pre['size'][0]}x{pre['size'][1]} (HxW), {pre.get('channel_order', 'RGB')}, value range "
        f"{pre['value_range']}, mean {pre['mean']}, std {pre['std']}",
        f"  resize: {pre.get('resize', '')}" + (f" (shorter side {pre['resize_shorter']})"
                                                if pre.get("resize_shorter") else ""),
        f"  fps {pre.get('fps') or 'as decoded'}, every {pre.get('frame_stride', 1)} frame(s); "
        f"tensor {pre.get('tensor_layout', 'NCHW float32')}",
        f"  {pre.get('formula', '')}" + ("  (folded into the graph: feed the RGB bytes)"
                                           if pre.get("folded_into_graph") else ""),
    ]
    return "\n".join(lines), ok


def _init(state: dict[str, Any]) -> str:
    """``zeros``, or an integer state's start and quantization: ``zero_point -128 (scale 0.0336)``."""
    q = state.get("quantization")
    if state.get("init") == "zero_point" and q:
        return f"zero_point {state.get('init_value', q['zero_point'])} (scale {q['scale']:.3g})"
    return str(state.get("init", "zeros"))
