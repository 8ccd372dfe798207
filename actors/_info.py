"""Introspection records: one frozen snapshot per actor, nested for supervisors."""

from __future__ import annotations

from typing import Literal

import msgspec

State = Literal["starting", "running", "stopping", "stopped", "crashed", "restarting"]


class ActorInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    kind: str  # "actor", "supervisor", "process"
    state: State
    pid: int = 0
    mailbox_depth: int = 0
    messages_in: int = 0
    messages_out: int = 0
    restarts: int = 0
    last_error: str = ""
    children: list[ActorInfo] = []
    details: dict[str, float | int | str] = {}

    def walk(self) -> list[ActorInfo]:
        """This actor and every descendant, depth first."""
        found = [self]
        for child in self.children:
            found.extend(child.walk())
        return found

    def find(self, name: str) -> ActorInfo | None:
        """The actor called `name` in this subtree."""
        return next((info for info in self.walk() if info.name == name), None)
