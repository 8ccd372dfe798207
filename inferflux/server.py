"""Wiring of the actor tree for `inferflux run` (every role).

    inferflux (one_for_one, 10 restarts / 60 s)
    ├── policy            authentication, RBAC, rate limits, guardrails (docs/security.md);
    │                     a process actor [inferflux-policy] with server.isolate
    ├── models            the model manager: loads and unloads models (serving/manager.py)
    │   └── engines       one subtree per loaded model (serving/subtree.py):
    │       └── model:ID      engine (worker-0: the model's process) and scheduler;
    │                         with --role prefill/decode also `cluster` (serving/cluster.py)
    └── ingress           hypercorn + quart-trio: the OpenAI HTTP API

Start order is top to bottom (the HTTP port opens last, once the startup models are
loaded); stop order is the reverse, so the ingress stops accepting before anything behind
it goes away. A crashed worker is restarted by its model's `engine` and the scheduler
re-admits its sequences by recompute; a model's subtree that fails leaves the others
serving.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trio

from actors import (
    ActorRef,
    ChildSpec,
    IntrospectionServer,
    Registry,
    Supervisor,
    chaos_control,
)
from transports import Address

from .config import Config
from .ingress.actor import IngressActor
from .ingress.browser import BrowserGuard
from .ingress.gate import Gate, OpenGate
from .ingress.policy_gate import PolicyGate
from .ingress.response_store import ResponseStore
from .ingress.services import Services
from .metrics import Metrics
from .model.store import default_model_path, resolve
from .policy.isolated import make_policy_actor
from .policy.setup import build_policy
from .serving.current import CurrentModels
from .serving.manager import ModelManager
from .tracing import RequestTracer


@dataclass
class Server:
    config: Config
    models: list[tuple[str, str, set[str]]]
    """The startup models: (served id, GGUF path, other names)."""
    root: Supervisor
    registry: Registry
    introspection: IntrospectionServer | None = None

    @property
    def port(self) -> int:
        ingress = self.root.child("ingress")
        return ingress.port if isinstance(ingress, IngressActor) else self.config.server.port


def startup_models(config: Config) -> list[tuple[str, str, set[str]]]:
    """The models to load before serving: `model.path` (or the default model) unless
    `model.serve` names others; each (served id, path, other names it answers to). A path
    serves under its file name, a store name under the store's name."""
    wanted = ([config.model.path] if config.model.path else []) + list(config.model.serve)
    if not wanted:
        wanted = [str(default_model_path())]
    models = []
    for i, given in enumerate(wanted):
        manifest = resolve(given)  # ModelStoreError: a clear message, exit 2
        is_path = given.endswith(".gguf") or os.sep in given
        model_id = manifest.path.stem if is_path or not manifest.dir else manifest.name
        if i == 0 and config.model.name:
            model_id = config.model.name
        names = {given, manifest.name, *manifest.aliases, manifest.path.stem} - {model_id, ""}
        models.append((model_id, str(manifest.path), names))
    ids = [model_id for model_id, _, _ in models]
    if len(set(ids)) != len(ids):
        raise ValueError(f"the same model is named twice: {ids}")
    return models


def build_server(
    config: Config,
    *,
    introspection_address: Address | None = None,
    socket_dir: str | None = None,
) -> Server:
    """The actor tree. `socket_dir`: a private directory (transports.SocketDir) for the
    worker links' ipc sockets."""
    policy = build_policy(config.policy)  # ConfigError (bad store key...) before anything loads
    startup = startup_models(config)
    registry = Registry()
    metrics = Metrics(startup[0][0], config.role)
    tracer = RequestTracer(config.server.otel_traces) if config.server.otel_traces else None
    gate: Gate = OpenGate(ActorRef("policy", registry))
    if policy is not None:
        gate = PolicyGate(
            ActorRef("policy", registry),
            audit=policy.audit,
            blocklist=policy.blocklist,
            needs_prompt_text=policy.needs_prompt_text,
        )
    services = Services(
        models=CurrentModels(lambda: root.child("models")),
        gate=gate,
        metrics=metrics,
        snapshot=lambda: root.info(),
        max_body_bytes=config.server.max_body_bytes,
        tracer=tracer,
        browser=BrowserGuard(
            config.server.host, config.server.cors_origins, config.server.allowed_hosts
        ),
        request_timeout_s=config.server.request_timeout_s,
        responses=ResponseStore(
            ttl_s=config.server.responses_ttl_s,
            max_per_principal=config.server.responses_per_principal,
            max_bytes=config.server.responses_max_bytes,
        ),
        openai_api=config.role != "prefill",
    )
    root = Supervisor(
        "inferflux",
        [
            ChildSpec("policy", lambda: make_policy_actor(config, policy, registry, socket_dir)),
            ChildSpec(
                "models",
                lambda: ModelManager(
                    "models",
                    config=config,
                    metrics=metrics,
                    startup=startup,
                    socket_dir=socket_dir,
                    in_registry=registry,
                ),
                shutdown_timeout_s=60,
            ),
            ChildSpec(
                "ingress",
                lambda: IngressActor(
                    "ingress",
                    services=services,
                    settings=config.server,
                    in_registry=registry,
                ),
                shutdown_timeout_s=config.server.drain_timeout_s + 5,
            ),
        ],
        max_restarts=10,
        max_seconds=60,
    )
    metrics.watch_tree(root.info)
    control = chaos_control(root) if config.server.chaos else None
    introspection = (
        IntrospectionServer(introspection_address, root.info, control)
        if introspection_address
        else None
    )
    return Server(config, startup, root, registry, introspection=introspection)


async def run_server(
    server: Server, task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the tree until it stops (request_stop on the root, or it gives up)."""
    async with trio.open_nursery() as nursery:
        if server.introspection is not None:
            await nursery.start(server.introspection.run)

        async def root_then_leave(task_status: trio.TaskStatus[None]) -> None:
            await server.root.run(task_status=task_status)
            nursery.cancel_scope.cancel()

        await nursery.start(root_then_leave)
        task_status.started(server)
