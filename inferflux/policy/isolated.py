"""The policy actor in an OS process of its own (`server.isolate = ["policy"]`).

A process actor is built from plain options, never from live objects. So where the
server's process hands PolicyActor a Policy factory it built (store, rate limiter, OIDC,
OPA, guardrails), this builds the same factory from the `[policy]` config, in the child:
the same code, the same checks. What differs:
- the store is opened again in the child, with the passphrase it gets in its environment
  (INFERFLUX_POLICY_KEY, from the server: never on a command line) or from
  policy.key_file; a restarted policy process reads the store as it is then;
- the audit log stays with the ingress, which writes its lines (this process neither
  opens nor closes it; it is closed when the server's process exits);
- what a restart resets is what an in-process restart resets (policy/actor.py): rate
  and failed-authentication buckets, running generations, the JWKS cache.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from actors import ProcessActor, Registry

from ..config import Config, PolicyConfig
from .actor import PolicyActor
from .setup import PolicySetup, build_policy
from .store import KEY_ENV

TARGET = "inferflux.policy.isolated:IsolatedPolicyActor"


class IsolatedPolicyActor(PolicyActor):
    def __init__(self, name: str, *, config: dict[str, Any], **kwargs: Any) -> None:
        policy_config = msgspec.convert(config, PolicyConfig)
        setup = build_policy(policy_config, in_child=True)
        super().__init__(
            name,
            make_policy=setup.make_policy if setup else None,
            store_poll_s=setup.store_poll_s if setup else 1.0,
            anonymous_max_priority=policy_config.anonymous_max_priority,
            **kwargs,
        )


def policy_process_env(setup: PolicySetup | None) -> dict[str, str]:
    """The isolated policy's environment: the server's own (what an in-process policy
    actor sees: the passphrase is no longer in it), plus the passphrase if it came from
    the environment."""
    env = dict(os.environ)
    if setup is not None and setup.secret:
        env[KEY_ENV] = setup.secret.decode()
    return env


def make_policy_actor(
    config: Config, setup: PolicySetup | None, registry: Registry, socket_dir: str | None
) -> PolicyActor | ProcessActor:
    """The policy actor of the server's tree: in-process, or in its own process
    (`inferflux-policy` on its command line) when `server.isolate` says so."""
    if "policy" in config.server.isolate:
        return ProcessActor(
            "policy",
            TARGET,
            {"config": msgspec.to_builtins(config.policy)},
            role="policy",
            socket_dir=socket_dir,
            env=policy_process_env(setup),
            in_registry=registry,
        )
    return PolicyActor(
        "policy",
        make_policy=setup.make_policy if setup else None,
        store_poll_s=setup.store_poll_s if setup else 1.0,
        audit=setup.audit if setup else None,
        anonymous_max_priority=config.policy.anonymous_max_priority,
        in_registry=registry,
    )
