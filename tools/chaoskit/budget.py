"""The chaos nemesis's restart budget: the supervisors' real restarts, read from the
actor tree, against their intensity, so that no fault pushes a supervisor past it."""

from __future__ import annotations

import time

from actors._info import ActorInfo

ENGINE_INTENSITY = 5  # engine supervisor: restarts allowed per 60 s (config supervision.*)
ROOT_INTENSITY = 10  # root supervisor (policy, models, ingress): restarts per 60 s
MODEL_INTENSITY = 3  # a model's subtree (model:ID: engine, metrics, scheduler) per 60 s
WINDOW_S = 60.0


def parent_of(tree: ActorInfo, name: str) -> ActorInfo | None:
    """The supervisor whose child `name` is."""
    for info in tree.walk():
        if any(child.name == name for child in info.children):
            return info
    return None


class RestartBudget:
    """The supervisors' real restarts, read from the tree, against their intensity.

    Counting the faults sent is not enough: a fault may restart nothing (a `link` fault
    whose 5% drop hit no frame) or more than planned, and a budget kept per round forgot
    the restarts of the previous round's last minute (the soak's rounds run back to back),
    which let the engine see 6 restarts in 60 s. So: poll the tree, note the time whenever
    a child's restart count grows (at the poll: later than it happened, so the window
    errs on the safe side), and keep this across rounds. A fault is sent only if its
    supervisor, counting the restarts seen and the faults sent in the window (whichever
    is more), still has room for it and one more."""

    def __init__(self, root: str) -> None:
        self.limits = {"engine": ENGINE_INTENSITY, root: ROOT_INTENSITY}
        self.counts: dict[tuple[str, str], int] = {}  # (supervisor, child) -> restarts
        self.seen: dict[str, list[float]] = {}  # supervisor -> times restarts were seen
        self.sent: dict[str, list[float]] = {}  # supervisor -> times faults were sent
        self.by_kind: dict[str, list[int]] = {}  # fault kind -> restarts seen after each

    def observe(self, tree: ActorInfo) -> None:
        now = time.monotonic()
        for info in tree.walk():
            if info.kind != "supervisor":
                continue
            for child in info.children:
                key = (info.name, child.name)
                grown = child.restarts - self.counts.get(key, 0)
                if grown < 0:  # a restarted supervisor counts from zero again
                    grown = child.restarts
                self.counts[key] = child.restarts
                self.seen.setdefault(info.name, []).extend([now] * grown)

    def recent(self, supervisor: str, now: float) -> int:
        def within(times: list[float]) -> int:
            return sum(1 for t in times if now - t < WINDOW_S)

        return max(within(self.seen.get(supervisor, [])), within(self.sent.get(supervisor, [])))

    def allows(self, tree: ActorInfo, target: str) -> bool:
        parent = parent_of(tree, target)
        if parent is None:
            return False
        limit = self.limits.get(parent.name, MODEL_INTENSITY)
        return self.recent(parent.name, time.monotonic()) + 2 <= limit

    def sending(self, tree: ActorInfo, target: str) -> None:
        parent = parent_of(tree, target)
        if parent is not None:
            self.sent.setdefault(parent.name, []).append(time.monotonic())

    def total(self) -> int:
        return sum(len(times) for times in self.seen.values())

    def summary(self) -> str:
        parts = [f"{name} {len(times)}" for name, times in sorted(self.seen.items()) if times]
        per_kind = [
            f"{kind} {sum(after)}/{len(after)}" for kind, after in sorted(self.by_kind.items())
        ]
        return (
            f"restarts seen: {', '.join(parts) or 'none'}; "
            f"restarts seen after each kind of fault (restarts/faults): {', '.join(per_kind)}"
        )
