"""A private directory for one process's ipc sockets.

A socket in the shared temp directory, created with the umask's mode, can be reached by
any local user, and by anyone who reads its path off a child's command line: whoever
connects first at a (re)start gets the link. Sockets in a directory only their owner can
enter (0700) are out of other users' reach; what runs as the same user is turned away by
the peer check (`Channel.accept_only`).

The directory is removed when its owner exits; one left behind by a process that was
killed is swept by the next owner that starts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile

# A unix socket's path has ~107 bytes at most: the directory leaves room for a file name.
_MAX_BASE = 40


def _short_temp_dir() -> str:
    """The temp directory, or /tmp where that is too deep for socket paths (a long
    TMPDIR, as macOS and test runners set)."""
    base = tempfile.gettempdir()
    return base if len(base) <= _MAX_BASE or not os.path.isdir("/tmp") else "/tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: alive
        return True
    return True


class SocketDir:
    """`with SocketDir("inferflux") as path:` a fresh private directory under
    <tmp>/<prefix>-<uid>/, named after this process."""

    def __init__(self, prefix: str = "inferflux", base: str | None = None) -> None:
        self.parent = os.path.join(base or _short_temp_dir(), f"{prefix}-{os.getuid()}")
        self.path = os.path.join(self.parent, f"{os.getpid()}-{secrets.token_hex(4)}")

    def __enter__(self) -> str:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> str:
        """Create the directory (sweeping those of dead owners first); its path."""
        os.makedirs(self.parent, mode=0o700, exist_ok=True)
        info = os.lstat(self.parent)
        if info.st_uid != os.getuid() or info.st_mode & 0o077 or not os.path.isdir(self.parent):
            # Someone else made it (or made it reachable): never put sockets there.
            raise PermissionError(f"{self.parent} is not a private directory of this user")
        self.sweep()
        os.mkdir(self.path, mode=0o700)
        return self.path

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def sweep(self) -> list[str]:
        """Remove the directories of owners that are gone (killed before they could)."""
        swept = []
        for name in os.listdir(self.parent):
            pid, _, _ = name.partition("-")
            if pid.isdigit() and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    shutil.rmtree(os.path.join(self.parent, name))
                    swept.append(name)
        return swept
