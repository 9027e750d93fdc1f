"""The classic builder's file server: parts of the build context as tar streams on a loopback port.

The classic builder has no RUN --mount: a file reaches a step only by COPY, which leaves it in a layer of the
image, or over the network. So the steps that install the conda installation and the wheels fetch them from this
server (`curl http://$FTP_PROXY/<bundle>.tar | tar -x`), install in place and delete them: the image then holds
one layer per install, not the files twice (a builder stage's layer and its COPY into the final stage).

Each bundle is a tar of one directory of the context, the step's (conda/, cuda/, torch/), its named entries in
the order given, relative to it: each bundle lists its script last, so a stream cut short fails the step instead
of running half of it.
Only GET of a known bundle is answered; the server listens on 127.0.0.1 only, on a port of the system's choice.
"""

from __future__ import annotations

import http.server
import logging
import tarfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger("modelarts_images.engine")

LOOPBACK = "127.0.0.1"


def write_bundle(stream: Any, root: Path, entries: Sequence[str]) -> None:
    """The tar of `entries` (names relative to root) to a writable binary stream, without seeking."""
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for name in entries:
            path = root / name
            if path.exists():
                archive.add(path, arcname=name, recursive=True, filter=_plain)


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """Regular files and directories only, owned by root: a link in the context is not followed out of it."""
    if not (info.isfile() or info.isdir()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _BundleServer

    def do_GET(self) -> None:
        name = self.path.lstrip("/").removesuffix(".tar")
        entries = self.server.bundles.get(name) if self.path.endswith(".tar") else None
        if entries is None:
            self.send_error(404, "no such bundle")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            write_bundle(self.wfile, self.server.root / name, entries)
        except (BrokenPipeError, ConnectionResetError):
            log.warning("the build stopped reading %s from the file server", self.path)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("file server: " + format, *args)


class _BundleServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, bundles: Mapping[str, Sequence[str]]) -> None:
        super().__init__((LOOPBACK, 0), _Handler)
        self.root = root
        self.bundles = {name: tuple(entries) for name, entries in bundles.items()}


@contextmanager
def serving(root: Path, bundles: Mapping[str, Sequence[str]]) -> Iterator[str]:
    """Serve `bundles` (directory name -> its entries) of the context at root while the block runs; yields host:port."""
    server = _BundleServer(root, bundles)
    thread = threading.Thread(target=server.serve_forever, name="modelarts-file-server", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
