"""The audit log file: private to the server's user, one JSON line per record."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from inferflux.policy.audit import AuditLog, AuditRecord, timestamp


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
