"""Wiring of the actor tree for `inferflux run --role unified`.

    inferflux (one_for_one)
    ├── engine (one_for_one, supervision.worker_max_restarts / window)
    │   └── worker-0      process actor: the model, the step loop  [inferflux-worker]
    ├── scheduler         queues, admission, KV accounting, prefix reuse
    ├── policy            authentication, RBAC, rate limits, guardrails (docs/security.md)
    └── ingress           hypercorn + quart-trio: the OpenAI HTTP API

Start order is top to bottom (the HTTP port opens last, once the rest exists); stop order is
the reverse, so the ingress stops accepting before anything behind it goes away. A crashed
worker is restarted by `engine` and the scheduler re-admits its sequences by recompute.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import msgspec
import trio

from actors import (
    ActorError,
    ActorRef,
    ChildSpec,
    IntrospectionServer,
    ProcessActor,
    Registry,
    Supervisor,
    chaos_control,
)
from transports import Address

from .config import Config
from .environment import child_environment
from .ingress.actor import IngressActor
from .ingress.browser import BrowserGuard
from .ingress.gate import Gate, OpenGate
from .ingress.policy_gate import PolicyGate
from .ingress.response_store import ResponseStore
from .ingress.served import ServedModel
from .ingress.services import Services
from .metrics import Metrics
from .model.chat_template import ChatTemplate
from .model.store import default_model_path
from .policy.actor import PolicyActor
from .policy.setup import build_policy
from .scheduler.actor import Scheduler
from .scheduler.messages import WorkerGaveUp
from .tracing import RequestTracer
from .worker.llama import Model

WORKER_TARGET = "inferflux.worker.actor:DeviceWorker"


@dataclass
class Server:
    config: Config
    model_path: str
    model_id: str
    root: Supervisor
    registry: Registry
    introspection: IntrospectionServer | None = None

    @property
    def port(self) -> int:
        ingress = self.root.child("ingress")
        return ingress.port if isinstance(ingress, IngressActor) else self.config.server.port


def build_server(
    config: Config,
    *,
    introspection_address: Address | None = None,
    socket_dir: str | None = None,
) -> Server:
    """The actor tree. `socket_dir`: a private directory (transports.SocketDir) for the
    worker links' ipc sockets."""
    policy = build_policy(config.policy)  # ConfigError (bad store key...) before anything loads
    model_path = config.model.path or str(default_model_path())
    model_id = config.model.name or os.path.basename(model_path).removesuffix(".gguf")
    tokenizer = Model(model_path, vocab_only=True)
    info = tokenizer.info
    template = ChatTemplate(
        info.chat_template,
        tokenizer.detokenize([info.bos], special=True),
        tokenizer.detokenize([info.eos], special=True),
    )
    registry = Registry()
    metrics = Metrics(model_id, config.role)
    sched = config.scheduler
    ctx_size = min(config.model.ctx_size, info.n_ctx_train or config.model.ctx_size)

    def make_worker() -> ProcessActor:
        return ProcessActor(
            "worker-0",
            WORKER_TARGET,
            {
                "model_path": model_path,
                "n_slots": sched.n_parallel,
                "cells_per_slot": ctx_size,
                "step_tokens": sched.step_tokens,
                "threads": config.model.threads,
                "gpu_layers": config.model.gpu_layers,
                "speculative": msgspec.structs.asdict(config.speculative),
                "crash_on_text": config.server.chaos_poison_text if config.server.chaos else "",
            },
            role="worker",
            socket_dir=socket_dir,
            env=child_environment(os.environ),  # no secrets: environment.py
            in_registry=registry,
        )

    def make_scheduler() -> Scheduler:
        return Scheduler(
            "scheduler",
            worker="worker-0",
            n_slots=sched.n_parallel,
            cells_per_slot=ctx_size,
            metrics=metrics,
            prefix_cache=sched.prefix_cache,
            max_waiting=sched.max_waiting,
            max_waiting_per_principal=sched.max_waiting_per_principal or None,
            worker_wait_s=sched.worker_wait_s,
            poison_crashes=config.supervision.poison_crashes,
            in_registry=registry,
        )

    def engine_gave_up(exceeded: Exception) -> None:
        # A message, not a method call: the scheduler may run in another process.
        with contextlib.suppress(ActorError):
            ActorRef("scheduler", registry).cast_nowait(WorkerGaveUp(str(exceeded)))

    def is_ready() -> bool:
        scheduler = root.child("scheduler")  # `root` is built below; called once serving
        return isinstance(scheduler, Scheduler) and scheduler.ready.is_set()

    tracer = RequestTracer(config.server.otel_traces) if config.server.otel_traces else None
    gate: Gate = OpenGate(ActorRef("policy", registry))
    if policy is not None:
        gate = PolicyGate(
            ActorRef("policy", registry),
            audit=policy.audit,
            blocklist=policy.blocklist,
            needs_prompt_text=policy.needs_prompt_text,
        )
    served = ServedModel(model_id, tokenizer, template, ctx_size)
    # Both walk the vocabulary once (~0.2 s): now, not inside the first request.
    _ = served.max_prompt_chars, served.special_texts
    services = Services(
        model=served,
        scheduler=ActorRef("scheduler", registry),
        gate=gate,
        metrics=metrics,
        workers_ready=is_ready,
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
    )
    root = Supervisor(
        "inferflux",
        [
            ChildSpec(
                "engine",
                lambda: Supervisor(
                    "engine",
                    [ChildSpec("worker-0", make_worker, shutdown_timeout_s=10)],
                    max_restarts=config.supervision.worker_max_restarts,
                    max_seconds=config.supervision.worker_restart_window_s,
                    on_give_up=engine_gave_up,
                ),
            ),
            ChildSpec("scheduler", make_scheduler),
            ChildSpec(
                "policy",
                lambda: PolicyActor(
                    "policy",
                    make_policy=policy.make_policy if policy else None,
                    store_poll_s=policy.store_poll_s if policy else 1.0,
                    audit=policy.audit if policy else None,
                    anonymous_max_priority=config.policy.anonymous_max_priority,
                    in_registry=registry,
                ),
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
    return Server(config, model_path, model_id, root, registry, introspection=introspection)


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
