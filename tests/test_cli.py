"""The command line: --list, hints for unknown names, checkpoint mismatch messages, no bundle after failure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import stexport
from stexport.cli import main


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stexport.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_list_shows_models_targets_and_extras(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in stexport.list_models():
        assert name in out
    for target in ("onnx", "tflite", "coreml", "executorch"):
        assert target in out
    assert "installed" in out and "clip" in out


def test_help_states_the_calibration_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from stexport.calibration import CLIP_COUNT, STREAM_FRAMES

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"stream form, default {STREAM_FRAMES}" in text and f"clip form, default {CLIP_COUNT}" in text


def test_list_models_pattern() -> None:
    names = stexport.list_models()
    assert names == sorted(names) and names
    first = names[0]
    assert stexport.list_models(first) == [n for n in names if first in n]
    assert stexport.list_models("*") == names
    assert stexport.list_models("no_such_model_*") == []


def test_unknown_model_exit_2_with_hint() -> None:
    name = stexport.list_models()[0]
    typo = name[:-1] + ("x" if name[-1] != "x" else "y")
    r = _run("--model", typo, "--target", "onnx")
    assert r.returncode == 2
    assert name in r.stderr and "Did you mean" in r.stderr and "Traceback" not in r.stderr


def test_unknown_target_exit_2_with_hint() -> None:
    r = _run("--model", stexport.list_models()[0], "--target", "tflit")
    assert r.returncode == 2 and "tflite" in r.stderr and "Traceback" not in r.stderr


def test_missing_arguments_exit_2() -> None:
    r = _run("--model", stexport.list_models()[0])
    assert r.returncode == 2 and "--target" in r.stderr


def test_checkpoint_mismatch_lists_keys_and_writes_nothing(tmp_path: Path) -> None:
    name = stexport.list_models()[0]
    model = stexport.create_model(name)
    sd = model.state_dict()
    first, second = list(sd)[:2]
    bad = {k: v for k, v in sd.items() if k != first}
    bad["surprise.weight"] = torch.zeros(1)
    bad[second] = torch.zeros(3, 1, 1, 1, 1)
    torch.save(bad, tmp_path / "bad.pt")
    r = _run("--model", name, "--target", "onnx", "--checkpoint", str(tmp_path / "bad.pt"), "--out",
             str(tmp_path / "out"))
    assert r.returncode == 1, r.stderr
    assert first in r.stderr and "surprise.weight" in r.stderr and second in r.stderr
    assert "missing" in r.stderr and "unexpected" in r.stderr and "shape" in r.stderr
    assert "Traceback" not in r.stderr and "no bundle was written" in r.stderr
    assert not list((tmp_path / "out").rglob("manifest.json")) if (tmp_path / "out").exists() else True


def test_model_options_reach_the_model_and_the_manifest(tmp_path: Path) -> None:
    r = _run("--model", "movinet_a0_stream", "--target", "onnx", "--set", "input_size=64", "--set", "pool_window=30",
             "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    manifest = json.loads((tmp_path / "movinet_a0_stream" / "onnx" / "manifest.json").read_text())
    assert manifest["model"]["options"] == {"input_size": 64, "pool_window": 30}
    assert manifest["model"]["pool_window"] == 30 and manifest["model"]["input_size"] == [64, 64]
    assert manifest["inputs"][0]["shape"] == [1, 3, 64, 64] and manifest["parity"]["passed"]
    # the app's crop follows the option (the registry's 172 px would feed a 64 px model the wrong frames)
    assert manifest["preprocessing"]["size"] == [64, 64], manifest["preprocessing"]


def test_unknown_model_option_exit_2_lists_the_options(tmp_path: Path) -> None:
    r = _run("--model", "movinet_a0_stream", "--target", "onnx", "--set", "pool_windw=3", "--out", str(tmp_path))
    assert r.returncode == 2 and "pool_window" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "movinet_a0_stream").exists()


def test_converter_chatter_is_captured_and_shown_only_on_failure(capfd: pytest.CaptureFixture[str]) -> None:
    """`captured_output` hides what native code writes to fds 1/2 and what Python code prints to ``sys.stdout``,
    even where that is not fd 1 (litert-torch's progress lines under pytest's capture broke `test_bench`'s first
    line when its conversion ran first in the process); a failure shows the captured tail on stderr."""
    import os

    from stexport.quiet import captured_output

    with captured_output():
        print("python chatter")
        os.write(1, b"native chatter\n")
    out, err = capfd.readouterr()
    assert "chatter" not in out + err
    with pytest.raises(RuntimeError), captured_output():
        print("the converter's last words")
        raise RuntimeError("failed")
    out, err = capfd.readouterr()
    assert "the converter's last words" in err and "last words" not in out


_CRASHING_EXPORT = """
import os, signal, sys
from pathlib import Path
final = Path(sys.argv[1])
final.parent.mkdir(parents=True, exist_ok=True)
os.replace(final, final.parent / f".{final.name}.old-{os.getpid()}")  # the bundle being replaced, set aside
part = final.parent / f".{final.name}.partial-{os.getpid()}-x"
part.mkdir()
(part / "manifest.json").write_text("{}")  # half written
import tempfile
Path(sys.argv[3]).write_text(tempfile.mkdtemp(prefix=f"stexport-calibration-{os.getpid()}-"))  # int8 samples
os.kill(os.getpid(), getattr(signal, sys.argv[2]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("signame", "says"), [("SIGSEGV", "crash in native code"),
                                               ("SIGKILL", "out-of-memory killer")])
def test_an_export_killed_by_a_signal_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                       signame: str, says: str) -> None:
    """The console command exports in a child process: a converter segfault (or the OOM killer) ends in one line
    naming the signal and its usual cause, and the child's staging folder is removed and the bundle it had set
    aside put back, and its calibration samples deleted, at once (not an hour later, as for an export killed
    outright)."""
    from stexport.calibration import STORE_PREFIX
    from stexport.child import run_guarded

    final = tmp_path / "m" / "tflite"
    final.mkdir(parents=True)
    (final / "manifest.json").write_text('{"old": true}')
    samples = tmp_path / "samples_folder"
    code = run_guarded([sys.executable, "-c", _CRASHING_EXPORT, str(final), signame, str(samples)], final=final)
    err = capsys.readouterr().err
    assert code == 1
    assert f"killed by {signame}" in err and says in err and "no bundle was written" in err
    assert sorted(p.name for p in final.parent.iterdir()) == ["tflite"]
    assert (final / "manifest.json").read_text() == '{"old": true}'
    assert Path(samples.read_text()).name.startswith(STORE_PREFIX) and not Path(samples.read_text()).exists()


@pytest.mark.parametrize(("code", "windows", "ended", "says"), [
    (-11, False, ("SIGSEGV", "SIGSEGV"), "killed by SIGSEGV during the stage printed last above: a crash in native"),
    (0xC0000005, True, ("status 0xC0000005 (access violation)", "SIGSEGV"),
     "ended with status 0xC0000005 (access violation) during the stage printed last above: a crash in native"),
    (0xC0000017, True, ("status 0xC0000017 (out of memory)", "SIGKILL"), "out of memory: the export needed more"),
    (0xC000013A, True, ("status 0xC000013A (Ctrl-C)", "SIGINT"), None),
    (0xC0000005, False, None, None), (1, True, None, None), (0, False, None, None)])
def test_a_crashed_childs_exit_code_is_named(code: int, windows: bool, ended: tuple[str, str] | None,
                                            says: str | None) -> None:
    """A child killed by a signal (POSIX: a negative exit code) or, on Windows, ended by a crash status (an NTSTATUS
    exit code such as 0xC0000005, where before the command exited with that code and said nothing) is named with its
    usual cause; an exit code of the child's own is passed on as it is."""
    from stexport.child import crash_message, killed_by

    assert killed_by(code, windows=windows) == ended
    if says is not None:
        assert ended is not None and says in crash_message(*ended)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(("fate", "code", "says"), [
    ("os.kill(os.getpid(), signal.SIGSEGV)", 1, "killed by SIGSEGV"),
    ("raise KeyboardInterrupt", 130, "stexport: interrupted; no bundle was written")])
def test_the_console_command_survives_a_crash_in_its_export(tmp_path: Path, fate: str, code: int, says: str) -> None:
    """End to end: ``stexport`` (``python -m stexport.cli``) whose export segfaults, as a converter would (a
    ``sitecustomize`` makes the child's export crash), exits 1 with the clear error, no traceback and no bundle;
    the parent process (no torch imported before the child runs) survived. Ctrl-C: exit 130, one line, no traceback."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal\n"
        "def export(*args, **kwargs):\n"
        f"    {fate}\n"
        "if os.environ.get('STEXPORT_IN_PROCESS'):\n"
        "    import stexport.pipeline\n"
        "    stexport.pipeline.export = export\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "stexport.cli", "--model", "movinet_a0_stream",
                        "--target", "onnx", "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env,
                        timeout=600)
    assert r.returncode == code, r.stderr
    # the parent's imports up to the child's start (the child runs without -X importtime): no torch
    parent = [line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert "stexport.child" in parent and not [m for m in parent[:parent.index("stexport.child")] if "torch" in m]
    assert says in r.stderr and "no bundle was written" in r.stderr and "Traceback" not in r.stderr
    assert not list((tmp_path / "out").rglob("*")) if (tmp_path / "out").exists() else True
