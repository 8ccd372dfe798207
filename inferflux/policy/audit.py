"""The audit log: one JSON line per request.

Each line: time, trace id, principal, method, path, model, HTTP status, decision
(allow/deny) with its reason code, prompt and completion tokens, finish reason, latency,
and SHA-256 of the prompt and completion text. The texts themselves are written only with
`policy.audit_debug = true` (an explicit choice, logged at start), so the log can be kept
and shipped without holding what users wrote.

Lines are appended with one `write` each on a file opened with O_APPEND, unbuffered: lines
of one process never interleave, and a line is in the file (the page cache: no fsync) once
`write` returns. What comes from the request line (method, path) is clipped
(`MAX_METHOD_CHARS`, `MAX_PATH_CHARS`), so a client cannot make one line 16 KiB long.

A write can fail (a full disk, a file size limit) or be short (the disk filled mid-line).
Both are errors, never silence: `write` returns False, the log is `failing` until a line
is written whole again, the first failure and the recovery are logged once each (not
once per line: the server log may be on the same full disk), and a torn line is ended
before the next one so that each line still parses on its own. With `fail_closed` the
gate answers 503 to protected requests while the log is failing (ingress/policy_gate.py);
the refused requests' own lines are the probes that notice the recovery.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field

import msgspec

log = logging.getLogger("inferflux.policy")

# From the request line, which a client writes: bounded in the log.
MAX_METHOD_CHARS = 16
MAX_PATH_CHARS = 512
MAX_PRINCIPAL_CHARS = 256


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
    client: str = ""
    """The HTTP peer's address."""
    suppressed: int = 0
    """Refused failed authentications from this client not written since its last line."""


def clip(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and how many more there were."""
    return text if len(text) <= limit else f"{text[:limit]}...[+{len(text) - limit}]"


@dataclass
class AuditLog:
    path: str
    debug: bool = False
    fail_closed: bool = False
    """Protected requests get 503 while the log is failing (policy.audit_fail_closed)."""
    failing: str = ""
    """Why the last write failed; "" while lines are written whole."""
    lost: int = 0
    """Lines not written (whole) since the log started failing."""
    _fd: int | None = field(default=None, init=False, repr=False)
    _torn: bool = field(default=False, init=False, repr=False)
    _encoder: msgspec.json.Encoder = field(default_factory=msgspec.json.Encoder, repr=False)

    @property
    def refusing(self) -> bool:
        """Requests must wait: the log is failing and configured to fail closed."""
        return self.fail_closed and bool(self.failing)

    def open(self) -> None:
        # 0600: the log names principals and, with audit_debug, holds prompts in clear.
        # (The mode applies when the file is created; an existing file keeps its own.)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        if self.debug:
            log.warning(
                "audit log %s holds prompts and completions in clear (audit_debug)", self.path
            )

    def write(self, record: AuditRecord, prompt: str | None, completion: str | None) -> bool:
        """Append one line; False if it is not (whole) in the file."""
        if prompt is not None:
            record.prompt_sha256 = sha256(prompt)
        if completion is not None:
            record.completion_sha256 = sha256(completion)
        if self.debug:
            record.prompt, record.completion = prompt, completion
        record.method = clip(record.method, MAX_METHOD_CHARS)
        record.path = clip(record.path, MAX_PATH_CHARS)
        record.principal = clip(record.principal, MAX_PRINCIPAL_CHARS)
        # After a torn line, end it first: every line must parse on its own.
        line = (b"\n" if self._torn else b"") + self._encoder.encode(record) + b"\n"
        try:
            if self._fd is None:
                self.open()
            assert self._fd is not None
            written = os.write(self._fd, line)
        except OSError as exc:
            self._failed(exc.strerror or str(exc))
            return False
        if written != len(line):
            self._torn = True
            self._failed(f"short write ({written} of {len(line)} bytes)")
            return False
        self._torn = False
        if self.failing:
            log.warning("audit log %s is written again; %d lines were lost", self.path, self.lost)
            self.failing, self.lost = "", 0
        return True

    def _failed(self, reason: str) -> None:
        self.lost += 1
        if not self.failing:
            log.error(
                "cannot write the audit log %s: %s; %s until it can",
                self.path,
                reason,
                "protected requests get 503" if self.fail_closed else "lines are lost",
            )
        self.failing = reason

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def timestamp(at: float | None = None) -> str:
    """UTC, ISO 8601 with milliseconds."""
    at = time.time() if at is None else at
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"
