"""A server's local sockets (issue 13): worker links and the introspection socket live in a
private directory of the server's own, named on nobody else's terms and gone at exit; chaos
mode says so loudly."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from actors import fetch_snapshot
from tests.conftest import start_server, stop_server
from tests.integration.test_process_actor import cmdline
from tests.integration.test_worker_crash import worker_pid

pytestmark = pytest.mark.model


def test_worker_links_live_in_a_private_directory_removed_at_exit(tmp_path: Path) -> None:
    server = start_server(str(tmp_path), "--n-parallel", "1", "--ctx-size", "256", "--chaos")
    try:
        link = re.search(r"--connect ipc://(\S+)", cmdline(worker_pid(server))).group(1)
        directory = os.path.dirname(link)
        info = os.stat(directory)
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
        assert os.path.basename(directory).startswith(f"{server.process.pid}-")
        tree = re.search(r"actor tree at (ipc://\S+)", server.log()).group(1)
        assert os.path.dirname(tree.removeprefix("ipc://")) == directory
        assert fetch_snapshot(tree).name == "inferflux"
        assert "CHAOS MODE IS ON" in server.log()
    finally:
        stop_server(server)
    assert not os.path.exists(directory)
