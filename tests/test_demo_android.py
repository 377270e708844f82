"""android_demo/: the plain-Kotlin core is compiled (kotlinc from npm) and its JUnit 4 tests run on the JVM,
replaying the golden.json of real bundles; the Android files are syntax-checked with tree-sitter and the names
they use are checked against a real TFLite manifest."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import demo_support as ds
import pytest

CORE = ds.ANDROID / "core" / "src"
APP = ds.ANDROID / "app" / "src" / "main"
APP_KOTLIN = sorted((APP / "java").rglob("*.kt"))


def _kotlin_sources() -> list[Path]:
    return sorted(CORE.rglob("*.kt"))


def _compile_core() -> tuple[Path, list[Path], str]:
    """kotlinc the core and its tests once per source version (cached by content hash)."""
    java, _ = ds.need(ds.java)
    junit = ds.need(ds.junit_classpath)
    home = ds.need(ds.kotlin_home)
    sources = _kotlin_sources()
    digest = hashlib.sha256(ds.KOTLIN_COMPILER.encode())
    for f in sources:
        digest.update(str(f.relative_to(CORE)).encode() + b"\0" + f.read_bytes())
    out = ds.CACHE / "kotlin-build" / digest.hexdigest()[:16]
    if not (out / "ok").is_file():
        out.mkdir(parents=True, exist_ok=True)
        cmd = [str(home / "bin" / "kotlinc"), *map(str, sources), "-cp", os.pathsep.join(map(str, junit)),
               "-d", str(out), "-nowarn"]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            pytest.fail(f"kotlinc failed:\n{p.stdout[-3000:]}{p.stderr[-3000:]}")
        (out / "ok").write_text("compiled\n")
    classpath = [out, home / "lib" / "kotlin-stdlib.jar", *junit]
    return out, classpath, java


def _test_classes(classes: Path) -> list[str]:
    return sorted(str(p.relative_to(classes).with_suffix("")).replace(os.sep, ".")
                  for p in classes.rglob("*Test.class") if "$" not in p.name)


def test_core_junit_replays_real_bundles() -> None:
    bundles = [ds.stream_bundle("tflite"), ds.clip_ring_bundle("onnx"), ds.tiny_clip_form_bundle("onnx"),
               ds.int8_io_bundle()]
    classes, classpath, java = _compile_core()
    tests = _test_classes(classes)
    assert "org.stexport.demo.core.GoldenReplayTest" in tests
    cmd = [java, f"-Dstexport.bundles={os.pathsep.join(map(str, bundles))}", "-cp",
           os.pathsep.join(map(str, classpath)), "org.junit.runner.JUnitCore", *tests]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    ok = re.search(r"^OK \((\d+) tests?\)", p.stdout, re.M)
    print(f"JUnit ({len(tests)} classes, bundles {[f'{b.parent.name}/{b.name}' for b in bundles]}): "
          + (ok.group(0) if ok else "FAILED"))
    assert p.returncode == 0 and ok, p.stdout[-4000:] + p.stderr[-2000:]
    assert int(ok.group(1)) >= 20


def object_constants(tree: Any, source: bytes, object_name: str) -> dict[str, str]:
    """``const val NAME = "value"`` inside ``object object_name { ... }``."""
    consts: dict[str, str] = {}

    def walk(n: Any, inside: bool) -> None:
        if n.type == "object_declaration":
            name = n.child_by_field_name("name")
            inside = name is not None and source[name.start_byte:name.end_byte].decode() == object_name
        if inside and n.type == "property_declaration":
            ident = next((c for c in n.children if c.type == "variable_declaration"), None)
            lit = next((c for c in n.children if c.type == "string_literal"), None)
            if ident is not None and lit is not None:
                key = source[ident.start_byte:ident.end_byte].decode().strip()
                consts[key] = "".join(source[c.start_byte:c.end_byte].decode() for c in lit.children
                                      if c.type == "string_content")
        for c in n.children:
            walk(c, inside)

    walk(tree.root_node, False)
    return consts


def test_kotlin_sources_parse() -> None:
    files = [*APP_KOTLIN, *_kotlin_sources()]
    assert len(APP_KOTLIN) >= 3
    trees = ds.parse_files("tree_sitter_kotlin", files)
    problems = {str(f.relative_to(ds.ANDROID)): ds.syntax_problems(t, f.read_bytes()) for f, t in trees.items()}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}
    broken = ds.parse_snippet("tree_sitter_kotlin", b"class A {\n  fun f( { val x = \n}\n")
    assert broken, "the syntax check must catch a broken file"


def test_android_names_match_a_real_tflite_manifest() -> None:
    bundle = ds.stream_bundle("tflite")
    m = json.loads((bundle / "manifest.json").read_text())
    src = CORE / "main" / "kotlin" / "org" / "stexport" / "demo" / "core" / "Manifest.kt"
    tree = ds.parse_files("tree_sitter_kotlin", [src])[src]
    keys = object_constants(tree, src.read_bytes(), "ManifestKeys")
    names = object_constants(tree, src.read_bytes(), "TensorNames")
    assert len(keys) >= 20 and {"FRAME", "LOGITS", "STATE_OUTPUT_SUFFIX"} <= set(names)
    missing = set(keys.values()) - ds.manifest_keys(m)
    assert not missing, f"the Kotlin core reads manifest keys a real manifest lacks: {missing}"
    assert names["FRAME"] in m["input_order"] and names["LOGITS"] in m["output_order"]
    assert names["DEFAULT_TFLITE_SIGNATURE"] == m["tflite"]["signature"]
    assert m["states"] and all(s["output"] == s["name"] + names["STATE_OUTPUT_SUFFIX"] for s in m["states"])
    # the Android files take every tensor name from the manifest: no state name is written into them
    trees = ds.parse_files("tree_sitter_kotlin", APP_KOTLIN)
    literals = {s for f, t in trees.items() for s in ds.string_literals(t, f.read_bytes(), "string_literal",
                                                                    "string_content")}
    tensor_names = set(m["input_order"]) | set(m["output_order"])
    assert not literals & tensor_names, f"hard-coded tensor names in the Android files: {literals & tensor_names}"
    runtime = (APP / "java" / "org" / "stexport" / "demo" / "LiteRtRuntime.kt").read_text()
    assert "runSignature(feeds, fetches, signature)" in runtime and "manifest.tfliteSignature" in runtime
    assert "getSignatureInputs(signature)" in runtime and "manifest.inputOrder" in runtime


def test_android_resources_are_consistent() -> None:
    ET.parse(APP / "AndroidManifest.xml")
    layout = ET.parse(APP / "res" / "layout" / "activity_main.xml")
    ns = "{http://schemas.android.com/apk/res/android}id"
    ids = {e.get(ns, "").removeprefix("@+id/") for e in layout.iter() if e.get(ns)}
    activity = (APP / "java" / "org" / "stexport" / "demo" / "MainActivity.kt").read_text()
    used = set(re.findall(r"R\.id\.(\w+)", activity))
    assert used and used <= ids, f"MainActivity uses ids the layout lacks: {used - ids}"
    strings = ET.parse(APP / "res" / "values" / "strings.xml").getroot()
    names = {e.get("name") for e in strings}
    code = "".join(f.read_text() for f in APP_KOTLIN) + (APP / "AndroidManifest.xml").read_text()
    refs = set(re.findall(r"R\.string\.(\w+)", code)) | set(re.findall(r"@string/(\w+)", code))
    assert refs <= names, f"missing string resources: {refs - names}"
    gradle = (ds.ANDROID / "app" / "build.gradle.kts").read_text()
    assert "com.google.ai.edge.litert:litert" in gradle and "androidx.camera:camera-camera2" in gradle
    assert 'project(":core")' in gradle
