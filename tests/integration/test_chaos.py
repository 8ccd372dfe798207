"""The chaos harness's ci profile, as CI runs it: a real server under a seeded nemesis
(SIGKILL/SIGSTOP of the worker, in-actor crashes of worker proxy and scheduler, dropped,
duplicated and delayed link frames, clients hanging up) must lose and duplicate nothing,
against an undisturbed reference run, and leave no orphan process or socket file."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.model


def test_chaos_ci_profile(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "chaos.py"), "--profile", "ci", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=480,
        cwd=REPO,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    summary = re.search(
        r"chaos: seed 3, (\d+) faults, (\d+) requests .* 0 lost, 0 dup, 0 violations", out
    )
    assert summary, out[-4000:]
    assert int(summary.group(1)) >= 3 and int(summary.group(2)) == 90


def test_chaos_ci_profile_with_a_prefill_node(tmp_path) -> None:
    """--disagg (issue 14): the server is a decode node and every prompt goes to a prefill
    node, which the nemesis also SIGKILLs (started again at the same door) and SIGSTOPs
    past the heartbeat timeout: each must cost a local prefill, the same text, no error;
    both paths must have run."""
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "chaos.py"), "--profile", "ci",
         "--seed", "5", "--disagg"],
        capture_output=True,
        text=True,
        timeout=480,
        cwd=REPO,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
    )  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    assert re.search(r"chaos: seed 5, \d+ faults, 90 requests .* 0 lost, 0 dup, 0 violations", out)
    paths = re.search(r"prompts computed by path: (\{.*\})", out)
    assert paths and "'remote'" in paths.group(1), out[-4000:]
