"""A stand-in for the Hugging Face Hub on loopback, speaking the part of its HTTP API that
huggingface_hub's `model_info(files_metadata=True)` and `hf_hub_download` use, so tests
run the real client code (HF_ENDPOINT points at it):

    GET  /api/models/ORG/REPO[/revision/REV]   repo info; siblings with size and LFS sha256
    HEAD /ORG/REPO/resolve/REV/FILE            X-Repo-Commit, ETag, Content-Length
    GET  /ORG/REPO/resolve/REV/FILE            the bytes; `Range: bytes=N-` answers 206

Faults for the tests: `drop_after` (close the connection after that many bytes of the
next full GET, once), `delay_s` (a pause per 1 MiB block, to catch a pull mid-file),
`lie_sha256` (announce another digest than the file's). Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_digests: dict[Path, str] = {}


def file_sha256(path: Path) -> str:
    if path not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        _digests[path] = digest.hexdigest()
    return _digests[path]


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class Hub:
    repos: dict[str, dict[str, Path]] = field(default_factory=dict)
    drop_after: int | None = None
    delay_s: float = 0.0
    lie_sha256: set[str] = field(default_factory=set)
    requests: list[Request] = field(default_factory=list)
    sent: int = 0
    """Body bytes sent so far, all files."""
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def downloads(self, filename: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + filename)]

    def sha256(self, repo: str, filename: str) -> str:
        real = file_sha256(self.repos[repo][filename])
        return "0" * 64 if filename in self.lie_sha256 else real


def serve(hub: Hub) -> ThreadingHTTPServer:
    """Start serving `hub` on a free loopback port (a daemon thread); call .shutdown()."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._answer(body=True)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            hub.requests.append(
                Request(
                    self.command,
                    self.path,
                    self.headers.get("Range"),
                    self.headers.get("Authorization"),
                )
            )
            path = self.path.split("?")[0]
            if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path):
                return self._info(m[1])
            if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/[^/]+/(.+)", path):
                return self._file(m[1], m[2], body)
            self._json(404, {"error": "not found"})

        def _json(self, status: int, payload: object, headers: dict | None = None) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _info(self, repo: str) -> None:
            if repo not in hub.repos:
                headers = {
                    "X-Error-Code": "RepoNotFound",
                    "X-Error-Message": "Repository not found",
                }
                return self._json(404, {"error": "Repository not found"}, headers)
            siblings = []
            for name, path in hub.repos[repo].items():
                size = path.stat().st_size
                lfs = {"sha256": hub.sha256(repo, name), "size": size, "pointerSize": 134}
                siblings.append({"rfilename": name, "size": size, "blobId": "b" * 40, "lfs": lfs})
            self._json(
                200,
                {
                    "id": repo,
                    "modelId": repo,
                    "sha": COMMIT,
                    "private": False,
                    "siblings": siblings,
                },
            )

        def _file(self, repo: str, name: str, body: bool) -> None:
            path = hub.repos.get(repo, {}).get(name)
            if path is None:
                headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
                return self._json(404, {"error": "Entry not found"}, headers)
            size = path.stat().st_size
            start = 0
            if m := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
                start = int(m[1])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hub.sha256(repo, name)}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(size - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            if not body:
                return
            drop = hub.drop_after if not start else None
            if drop is not None:
                hub.drop_after = None  # once
            sent = 0
            with open(path, "rb") as f:
                f.seek(start)
                while block := f.read(1 << 20):
                    if drop is not None and sent + len(block) > drop:
                        self.wfile.write(block[: drop - sent])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(block)
                    sent += len(block)
                    hub.sent += len(block)
                    if hub.delay_s:
                        time.sleep(hub.delay_s)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hub.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def write_gguf(path: Path, metadata: dict[str, str]) -> Path:
    """A minimal valid GGUF (v3, string metadata, no tensors): an mmproj stand-in; no
    projector ships on PyPI."""
    out = bytearray(b"GGUF")
    out += (3).to_bytes(4, "little") + (0).to_bytes(8, "little")
    out += len(metadata).to_bytes(8, "little")
    for key, value in metadata.items():
        for text in (key,):
            out += len(text.encode()).to_bytes(8, "little") + text.encode()
        out += (8).to_bytes(4, "little")
        out += len(value.encode()).to_bytes(8, "little") + value.encode()
    path.write_bytes(bytes(out))
    return path
