"""The audit log: one JSON line per request.

Each line: time, trace id, principal, method, path, model, HTTP status, decision
(allow/deny) with its reason code, prompt and completion tokens, finish reason, latency,
and SHA-256 of the prompt and completion text. The texts themselves are written only with
`policy.audit_debug = true` (an explicit choice, logged at start), so the log can be kept
and shipped without holding what users wrote.

Lines are appended with one `write` each on a file opened with O_APPEND and flushed at
once: lines never interleave, and a crash loses at most the line being written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from typing import IO

import msgspec

log = logging.getLogger("inferflux.policy")


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class AuditRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    time: str
    trace_id: str
    principal: str
    method: str
    path: str
    status: int
    decision: str  # "allow" | "deny"
    reason: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    latency_ms: float = 0.0
    prompt_sha256: str = ""
    completion_sha256: str = ""
    prompt: str | None = None  # debug only
    completion: str | None = None  # debug only


@dataclass
class AuditLog:
    path: str
    debug: bool = False
    _file: IO[bytes] | None = field(default=None, init=False, repr=False)
    _encoder: msgspec.json.Encoder = field(default_factory=msgspec.json.Encoder, repr=False)

    def open(self) -> None:
        # 0600: the log names principals and, with audit_debug, holds prompts in clear.
        # (The mode applies when the file is created; an existing file keeps its own.)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "ab", buffering=0)  # closed in close()
        if self.debug:
            log.warning(
                "audit log %s holds prompts and completions in clear (audit_debug)", self.path
            )

    def write(self, record: AuditRecord, prompt: str | None, completion: str | None) -> None:
        if prompt is not None:
            record.prompt_sha256 = sha256(prompt)
        if completion is not None:
            record.completion_sha256 = sha256(completion)
        if self.debug:
            record.prompt, record.completion = prompt, completion
        if self._file is None:
            self.open()
        assert self._file is not None
        try:
            self._file.write(self._encoder.encode(record) + b"\n")
        except OSError as exc:
            log.error("cannot write the audit log %s: %s", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def timestamp(at: float | None = None) -> str:
    """UTC, ISO 8601 with milliseconds."""
    at = time.time() if at is None else at
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"
