"""The chaos nemesis's restart budget with isolated processes (tools/chaoskit/): a kill of
the scheduler's process is charged to its model's subtree (3 restarts / 60 s), a kill of
the policy's to the root (10 / 60 s), and a fault is sent only while its supervisor has
room for it and one more."""

from __future__ import annotations

import os
import sys

from actors import ActorInfo

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))

from chaoskit.budget import RestartBudget, parent_of  # noqa: E402
from chaoskit.nemesis import TARGETS  # noqa: E402


def tree(scheduler_restarts: int = 0, policy_restarts: int = 0) -> ActorInfo:
    def node(name: str, kind: str = "supervisor", restarts: int = 0, *children: ActorInfo):
        return ActorInfo(name, kind, "running", restarts=restarts, children=list(children))

    subtree = node(
        "model:m",
        "supervisor",
        0,
        node("engine", "supervisor", 0, node("worker-0", "process")),
        node("metrics", "actor"),
        node("scheduler", "process", scheduler_restarts),
    )
    models = node("models", "actor", 0, node("engines", "supervisor", 0, subtree))
    return node("inferflux", "supervisor", 0, node("policy", "process", policy_restarts), models)


def test_scheduler_kills_are_charged_to_the_model_subtree_and_policy_kills_to_the_root() -> None:
    budget = RestartBudget("inferflux")
    budget.observe(tree())
    scheduler, policy = TARGETS["sigkill-scheduler"], TARGETS["sigkill-policy"]
    assert parent_of(tree(), scheduler).name == "model:m"
    assert parent_of(tree(), policy).name == "inferflux"
    # model:m allows 3 restarts in 60 s: a kill is sent while the restarts seen, this
    # one and one more stay within it (a fault may restart more than planned).
    for restarts in range(2):
        assert budget.allows(tree(restarts), scheduler)
        budget.sending(tree(restarts), scheduler)
        budget.observe(tree(restarts + 1))  # the restart it caused, seen in the tree
    assert not budget.allows(tree(2), scheduler)
    for restarts in range(9):  # the root allows 10
        assert budget.allows(tree(2, restarts), policy)
        budget.sending(tree(2, restarts), policy)
        budget.observe(tree(2, restarts + 1))
    assert not budget.allows(tree(2, 9), policy)
    assert budget.summary().startswith("restarts seen: inferflux 9, model:m 2")
