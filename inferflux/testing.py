"""Helpers for what starts servers as child processes: the tests and `tools/`.

Not used by the server itself. They live in the package (not in tests/ or tools/) because
both need them: `tools/*.py` run as scripts, and must not import the test suite.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dies_with_parent() -> None:
    """A `preexec_fn` for test servers: the child gets SIGTERM when the process that
    started it dies (Linux PR_SET_PDEATHSIG), so a test run that is killed (a timeout, ^C)
    leaves no server running. Elsewhere nothing is done."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def stop_process(process: subprocess.Popen, timeout_s: float = 30, group: bool = False) -> None:
    """SIGTERM (a server drains and exits), wait up to `timeout_s`, then SIGKILL.

    `group`: signal the whole process group, for a child started with
    `start_new_session=True` whose own children must go too."""
    if process.poll() is not None:
        return

    def signal_it(sig: signal.Signals) -> None:
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)

    signal_it(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        signal_it(signal.SIGKILL)
        process.wait()
