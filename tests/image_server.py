"""A real local HTTP server for the image-fetch tests (server.image_fetch): an image, a
redirect, a 404, bodies too large (declared or not), a body that trickles and one that
never comes."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.vision_fixture import png

IMAGE = png(seed=51)
HUGE = 9 * 1024 * 1024  # over the 8 MiB cap


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: a body without Content-Length runs until the connection closes
    def do_GET(self) -> None:
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the fetcher gave up: what these tests want

    def _answer(self) -> None:
        path = self.path
        if path == "/cat.png":
            self._head(200, {"Content-Type": "image/png", "Content-Length": str(len(IMAGE))})
            self.wfile.write(IMAGE)
        elif path == "/redirect":
            self._head(302, {"Location": "/cat.png", "Content-Length": "0"})
        elif path == "/huge":  # no Content-Length: only counting the body finds it
            self._head(200, {"Content-Type": "image/png"})
            self.wfile.write(IMAGE[:64])
            for _ in range(HUGE // 65536 + 1):
                self.wfile.write(b"\0" * 65536)
        elif path == "/huge-declared":
            self._head(200, {"Content-Type": "image/png", "Content-Length": str(HUGE)})
            self.wfile.write(IMAGE[:64])
        elif path == "/slow":  # a byte every 0.2 s: no read waits long, the whole does
            self._head(200, {"Content-Type": "image/png"})
            for byte in IMAGE[:150]:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(0.2)
        elif path == "/stall":  # headers, then nothing
            self._head(200, {"Content-Type": "image/png", "Content-Length": str(len(IMAGE))})
            time.sleep(30)
        else:
            self._head(404, {"Content-Length": "0"})

    def _head(self, status: int, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@contextlib.contextmanager
def image_server() -> Iterator[str]:
    """Serve on 127.0.0.1 (a free port); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
