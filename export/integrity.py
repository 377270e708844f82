"""The artifact's sha256, recorded in the manifest at export and checked before the artifact is run.

A folder artifact (Core ML ``.mlpackage``) hashes every file under it: relative path and content, in path order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from stexport.errors import BundleError

_CHUNK = 1 << 20


def _file_digest(path: Path, h: Any) -> None:
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)


def artifact_sha256(path: Path) -> str:
    """Hex sha256 of a file, or of a folder's files (each one's relative path, NUL, content), in path order."""
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            _file_digest(f, h)
    else:
        _file_digest(path, h)
    return h.hexdigest()


def read_manifest(bundle: str | Path) -> dict[str, Any]:
    """``<bundle>/manifest.json``, parsed; `BundleError` naming the file when it is missing or not JSON."""
    path = Path(bundle) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise BundleError(f"{path} does not exist: pass a bundle folder written by stexport "
                          "(<out>/<model>/<target>/)") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{path} cannot be read as JSON ({type(e).__name__}); re-export the bundle") from None
    if not isinstance(manifest, dict) or "artifact" not in manifest:
        raise BundleError(f"{path} is not a stexport manifest (no 'artifact'); re-export the bundle")
    return manifest


def checked_artifact(bundle: str | Path, manifest: dict[str, Any]) -> Path:
    """The artifact's path, after its sha256 matched the manifest's; else `BundleError` naming the file."""
    info = manifest["artifact"]
    path = Path(bundle) / info["file"]
    want = info.get("sha256")
    if not path.exists():
        raise BundleError(f"artifact {path} is missing; copy the whole bundle folder")
    if not want:
        raise BundleError(f"{Path(bundle) / 'manifest.json'} records no sha256 for {info['file']}, so the artifact "
                          "cannot be checked; re-export the bundle with this stexport")
    got = artifact_sha256(path)
    if got != want:
        raise BundleError(f"artifact {path} does not match its manifest: its sha256 is {got[:16]}..., the manifest "
                          f"records {want[:16]}... (a truncated or modified copy); copy the bundle again or re-export")
    return path
