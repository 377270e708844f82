"""Serve the web demo on 127.0.0.1 with the MIME types onnxruntime-web needs (.mjs, .wasm).

    python3 serve.py --bundle ../out/movinet_a0_stream/onnx          # then open the printed URL

``--bundle DIR`` is served at ``/bundle/`` and the printed URL loads it (``?bundle=bundle/``). Cross-origin isolation
headers are sent so onnxruntime-web may use several wasm threads. Standard library only.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import threading
import urllib.parse
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MIME = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json",
        ".onnx": "application/octet-stream", ".tflite": "application/octet-stream",
        ".rgb": "application/octet-stream", ".txt": "text/plain; charset=utf-8",
        ".mp4": "video/mp4", ".webm": "video/webm"}


class Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from ``directory``; URL prefixes in ``mounts`` map to other folders."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME}

    def __init__(self, *args, mounts: dict[str, Path] | None = None, isolate: bool = True, quiet: bool = False,
                 **kwargs) -> None:
        self.mounts = mounts if mounts is not None else {}
        self.isolate = isolate
        self.quiet = quiet
        super().__init__(*args, **kwargs)

    def translate_path(self, path: str) -> str:
        clean = urllib.parse.unquote(path.split("?", 1)[0].split("#", 1)[0])
        for prefix, folder in list(self.mounts.items()):
            if clean.startswith(prefix):
                rel = Path(clean[len(prefix):].lstrip("/"))
                if ".." in rel.parts:
                    return str(folder / "__forbidden__")
                return str(folder / rel)
        return super().translate_path(path)

    _remaining: int | None = None

    def send_head(self) -> Any:
        """Single byte ranges (``Range: bytes=a-b``): a video element can only seek in a file served with them."""
        rng = self.headers.get("Range", "")
        path = Path(self.translate_path(self.path))
        if not rng.startswith("bytes=") or "," in rng or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        first, _, last = rng[len("bytes="):].partition("-")
        try:
            start = int(first) if first else max(0, size - int(last))
            end = min(int(last), size - 1) if first and last else size - 1
        except ValueError:
            return super().send_head()
        if start >= size or start > end:
            self.send_error(416, "Requested Range Not Satisfiable")
            return None
        f = path.open("rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._remaining = end - start + 1
        return f

    def copyfile(self, source: Any, outputfile: Any) -> None:
        remaining = self._remaining
        if remaining is None:
            super().copyfile(source, outputfile)
            return
        self._remaining = None
        while remaining > 0:
            chunk = source.read(min(1 << 16, remaining))
            if not chunk:
                break
            outputfile.write(chunk)
            remaining -= len(chunk)

    def end_headers(self) -> None:
        self.send_header("Cache-Control", "no-store")
        if self.isolate:
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        if not self.quiet:
            super().log_message(format, *args)


def make_server(*, port: int = 0, mounts: dict[str, Path] | None = None, isolate: bool = True,
                quiet: bool = True) -> http.server.ThreadingHTTPServer:
    """A server on 127.0.0.1 (``port=0``: any free port) serving this folder plus ``mounts`` ("/bundle/" -> dir).
    The server keeps using the ``mounts`` dict it was given, so entries added later are served too."""
    table = mounts if mounts is not None else {}
    for k, v in list(table.items()):
        table[k] = Path(v)
    handler = functools.partial(Handler, directory=str(HERE), mounts=table, isolate=isolate, quiet=quiet)
    return http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)


def serve_in_thread(**kwargs: object) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Start `make_server` on a daemon thread; returns the server and its base URL. Stop with ``server.shutdown()``."""
    server = make_server(**kwargs)  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--bundle", type=Path, help="an exported ONNX bundle folder, served at /bundle/")
    ap.add_argument("--no-isolation", action="store_true", help="do not send COOP/COEP (single-threaded wasm)")
    args = ap.parse_args()
    mounts = {"/bundle/": args.bundle.resolve()} if args.bundle else {}
    server = make_server(port=args.port, mounts=mounts, isolate=not args.no_isolation, quiet=False)
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html" + ("?bundle=bundle/" if args.bundle else "")
    print(f"Serving {HERE} on {url}  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
