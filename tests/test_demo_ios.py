"""ios_demo/: the Swift sources are syntax-checked with tree-sitter-swift and the names they use are checked
against a real exported manifest (the Core ML exporter gives the .mlpackage exactly the manifest's feature
names; the ONNX bundle of the same model is used here because Core ML conversion is slow and not every family
converts yet). Building and running the app needs Xcode (README)."""

from __future__ import annotations

import json
import plistlib
import re
from pathlib import Path
from typing import Any

import demo_support as ds

APP = ds.IOS / "StexportDemo"
CORE = ds.IOS / "Sources" / "StexportCore"


def _swift_files() -> list[Path]:
    return sorted(ds.IOS.rglob("*.swift"))


def enum_constants(tree: Any, source: bytes, enum_name: str) -> dict[str, str]:
    """``static let name = "value"`` inside ``enum enum_name { ... }``."""
    consts: dict[str, str] = {}

    def text(n: Any) -> str:
        return source[n.start_byte:n.end_byte].decode()

    def walk(n: Any, inside: bool) -> None:
        if n.type == "class_declaration":
            name = n.child_by_field_name("name")
            inside = name is not None and text(name) == enum_name
        if inside and n.type == "property_declaration":
            name = n.child_by_field_name("name")
            value = n.child_by_field_name("value")
            if name is not None and value is not None and value.type == "line_string_literal":
                consts[text(name)] = "".join(text(c) for c in value.children if c.type == "line_str_text")
        for c in n.children:
            walk(c, inside)

    walk(tree.root_node, False)
    return consts


def test_swift_sources_parse() -> None:
    files = _swift_files()
    assert {f.name for f in files} >= {"StexportDemoApp.swift", "ContentView.swift", "CameraSource.swift",
                                       "CoreMLRuntime.swift", "Manifest.swift", "StreamSession.swift"}
    trees = ds.parse_files("tree_sitter_swift", files)
    problems = {str(f.relative_to(ds.IOS)): ds.syntax_problems(t, f.read_bytes()) for f, t in trees.items()}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}
    assert ds.parse_snippet("tree_sitter_swift", b"struct A { func f( { let x = }\n"), "must catch a broken file"


def test_ios_names_match_a_real_manifest() -> None:
    bundle = ds.stream_bundle("onnx")
    m = json.loads((bundle / "manifest.json").read_text())
    src = CORE / "Manifest.swift"
    tree = ds.parse_files("tree_sitter_swift", [src])[src]
    keys = enum_constants(tree, src.read_bytes(), "ManifestKeys")
    names = enum_constants(tree, src.read_bytes(), "TensorNames")
    assert len(keys) >= 20 and {"frame", "logits", "stateOutputSuffix"} <= set(names)
    missing = set(keys.values()) - ds.manifest_keys(m)
    assert not missing, f"the Swift core reads manifest keys a real manifest lacks: {missing}"
    assert names["frame"] in m["input_order"] and names["logits"] in m["output_order"]
    assert m["states"] and all(s["output"] == s["name"] + names["stateOutputSuffix"] for s in m["states"])
    app_files = sorted(APP.glob("*.swift"))
    trees = ds.parse_files("tree_sitter_swift", app_files)
    literals = {s for f, t in trees.items()
                for s in ds.string_literals(t, f.read_bytes(), "line_string_literal", "line_str_text")}
    tensor_names = set(m["input_order"]) | set(m["output_order"])
    assert not literals & tensor_names, f"hard-coded tensor names in the app: {literals & tensor_names}"
    runtime = (APP / "CoreMLRuntime.swift").read_text()
    assert "for t in manifest.inputs" in runtime and "featureValue(for: t.name)" in runtime
    assert "Set(manifest.inputOrder)" in runtime and "Set(manifest.outputOrder)" in runtime


def test_ios_project_files() -> None:
    info = plistlib.loads((APP / "Info.plist").read_bytes())
    assert info["NSCameraUsageDescription"]
    package = (ds.IOS / "Package.swift").read_text()
    for path in re.findall(r'path: "([^"]+)"', package):
        assert (ds.IOS / path).is_dir(), path
    readme = (ds.IOS / "README.md").read_text()
    assert "Xcode" in readme and "bundle" in readme
