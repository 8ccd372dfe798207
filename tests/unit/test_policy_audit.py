"""The audit log file: private to the server's user, one JSON line per record, clipped
request-line fields, failed and short writes reported (never a silent half line)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from inferflux.policy.audit import (
    MAX_METHOD_CHARS,
    MAX_PATH_CHARS,
    AuditLog,
    AuditRecord,
    timestamp,
)
from tests.conftest import REPO


def test_the_audit_log_is_created_0600_even_with_a_lax_umask(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), debug=True)
    previous = os.umask(0o022)  # the usual umask would make open() create it 0644
    try:
        log.write(
            AuditRecord(
                time=timestamp(), trace_id="t", principal="p", method="POST", path="/", status=200,
                decision="allow",
            ),
            "a prompt",
            "a completion",
        )  # fmt: skip
    finally:
        os.umask(previous)
        log.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (line,) = path.read_text().splitlines()
    assert json.loads(line)["prompt"] == "a prompt"


def record(path: str = "/v1/models", method: str = "GET") -> AuditRecord:
    return AuditRecord(
        time=timestamp(), trace_id="t", principal="p", method=method, path=path, status=200,
        decision="allow",
    )  # fmt: skip


def test_what_the_request_line_brings_is_clipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    assert log.write(record(path="/v1/" + "a" * 10_000, method="X" * 300), None, None)
    log.close()
    (line,) = path.read_text().splitlines()
    written = json.loads(line)
    assert written["path"] == "/v1/" + "a" * (MAX_PATH_CHARS - 4) + "...[+9492]"
    assert written["method"] == "X" * MAX_METHOD_CHARS + "...[+284]"
    assert len(line) < 1000


def test_a_failing_audit_log_says_so_once_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog("/dev/full", fail_closed=True)  # every write: ENOSPC, a full disk
    assert not log.refusing
    assert log.write(record(), None, None) is False
    assert log.write(record(), None, None) is False
    assert log.refusing and "No space left" in log.failing and log.lost == 2
    assert caplog.text.count("cannot write the audit log") == 1  # not once per line
    log.close()
    log.path = str(tmp_path / "audit.jsonl")  # the disk has room again
    assert log.write(record(), None, None) is True
    assert not log.refusing and "2 lines were lost" in caplog.text
    open_log = AuditLog("/dev/full")
    assert open_log.write(record(), None, None) is False and not open_log.refusing


SHORT_WRITE = textwrap.dedent(
    """
    import json, resource, signal, sys
    from inferflux.policy.audit import AuditLog, AuditRecord

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG and short writes, not a signal
    log = AuditLog(sys.argv[1])
    def record(n):
        return AuditRecord(time="t", trace_id=str(n), principal="p", method="GET",
                           path="/v1/models", status=200, decision="allow")
    results = [log.write(record(1), None, None)]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # Room for one and a half lines: the second write stops mid-line (a short write).
    size = len(open(sys.argv[1], "rb").read())
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + size // 2, hard))
    results.append(log.write(record(2), None, None))
    failing = log.failing
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the disk has room again
    results.append(log.write(record(3), None, None))
    print(json.dumps({"results": results, "failing": failing, "after": log.failing}))
    """
)


def test_a_short_write_is_an_error_and_the_torn_line_stays_apart(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    result = subprocess.run(
        [sys.executable, "-c", SHORT_WRITE, str(path)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["results"] == [True, False, True]
    assert outcome["failing"].startswith("short write") and outcome["after"] == ""
    first, torn, third = path.read_text().splitlines()
    assert json.loads(first)["trace_id"] == "1" and json.loads(third)["trace_id"] == "3"
    with pytest.raises(json.JSONDecodeError):
        json.loads(torn)  # half a line, alone on its line: never glued to the next one
