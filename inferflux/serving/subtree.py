"""One model's engine subtree, and what the ingress needs to serve it.

    model:NAME (one_for_one, 3 restarts / 60 s)
    ├── engine (one_for_one, supervision.worker_max_restarts / window)
    │   └── worker-0      process actor: the model, the step loop  [inferflux-worker]
    ├── metrics           applies the scheduler's MeterReports to prometheus
    ├── kvcache           KV handoffs in flight (role prefill or decode: kvcache/actor.py)
    ├── cluster           this node among its peers (role prefill or decode)
    └── scheduler         queues, admission, KV accounting, prefix reuse
                          (a process actor [inferflux-scheduler] with server.isolate)

Each subtree registers its actors in a registry of its own, so every model has a
"scheduler" and a "worker-0" and they never meet. A crash, even an engine that gives up,
stays inside one subtree: the other models keep serving.

An isolated scheduler is built in its own process from plain options (the same ones);
it reaches `worker-0` and `metrics` of this subtree's registry by name, through its link
(ProcessActor imports), and the server reads its readiness from the details it reports.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import msgspec

from actors import ActorError, ActorRef, ChildSpec, ProcessActor, Registry, Supervisor

from ..config import Config
from ..environment import child_environment
from ..ingress.served import ServedModel
from ..kvcache.actor import KVCache
from ..metrics import Metrics
from ..scheduler.actor import Scheduler
from ..scheduler.messages import WorkerGaveUp
from ..scheduler.meter import MetricsActor
from .cluster import PEER_PREFIX, ClusterNode
from .gpus import node_gpus, worker_environment

WORKER_TARGET = "inferflux.worker.actor:DeviceWorker"
SCHEDULER_TARGET = "inferflux.scheduler.actor:Scheduler"
METRICS_TARGET = "inferflux.scheduler.meter:MetricsActor"


@dataclass
class EngineHandle:
    """A running model's engine as the rest of the server sees it."""

    name: str
    registry: Registry
    scheduler: ActorRef
    workers: list[ActorRef]
    latest: dict[str, Any]
    """The scheduler of the latest start (the actor, or its process's proxy), for readiness."""

    @property
    def ready(self) -> bool:
        """A worker is attached to the scheduler: its details say so (an isolated one
        reports them over its link, so this lags by up to actors' DETAILS_EVERY_S)."""
        scheduler = self.latest.get("scheduler")
        return (
            scheduler is not None
            and scheduler.state == "running"
            and scheduler.details().get("ready") == 1
        )


def worker_names(config: Config) -> list[str]:
    return [f"worker-{i}" for i in range(config.model.workers)]


def worker_options(config: Config, model_path: str, ctx_size: int) -> dict[str, Any]:
    threads = config.model.threads or os.cpu_count() or 1
    options: dict[str, Any] = {
        "model_path": model_path,
        "n_slots": config.scheduler.n_parallel,
        "cells_per_slot": ctx_size,
        "step_tokens": config.scheduler.step_tokens,
        "max_step_s": config.scheduler.step_ms_for(config.role) / 1000,
        "threads": max(1, threads // config.model.workers),
        "gpu_layers": config.model.gpu_layers,
        "crash_on_text": config.server.chaos_poison_text if config.server.chaos else "",
    }
    speculative = getattr(config, "speculative", None)
    if speculative is not None:
        options["speculative"] = msgspec.structs.asdict(speculative)
    return options


def engine_subtree(
    config: Config,
    served: ServedModel,
    model_path: str,
    metrics: Metrics,
    socket_dir: str | None,
    clustered: bool = False,
) -> tuple[ChildSpec, EngineHandle]:
    """The ChildSpec of one model's subtree (for the root supervisor) and its handle.
    `clustered`: the model this node serves to its cluster peers (role prefill or decode:
    the subtree then has a `cluster` node, serving/cluster.py)."""
    clustered = clustered and config.role != "unified"
    registry = Registry()
    latest: dict[str, Any] = {}
    handle = EngineHandle(
        served.id,
        registry,
        ActorRef("scheduler", registry),
        [ActorRef(name, registry) for name in worker_names(config)],
        latest,
    )
    sched, supervision = config.scheduler, config.supervision

    workers = config.model.workers
    gpus = node_gpus(os.environ) if workers > 1 else []  # dealt out among them: gpus.py

    def make_worker(index: int) -> ProcessActor:
        return ProcessActor(
            f"worker-{index}",
            WORKER_TARGET,
            worker_options(config, model_path, served.ctx_size)
            | ({"mmproj_path": served.mmproj} if served.mmproj else {}),
            role="worker",
            socket_dir=socket_dir,
            # no secrets: environment.py
            env=worker_environment(child_environment(os.environ), gpus, index, workers),
            in_registry=registry,
        )

    options: dict[str, Any] = {
        "workers": worker_names(config),
        "n_slots": sched.n_parallel,
        "cells_per_slot": served.ctx_size,
        "meter": "metrics",
        "prefix_cache": sched.prefix_cache,
        "max_waiting": sched.max_waiting,
        "max_waiting_per_principal": sched.max_waiting_per_principal or None,
        "worker_wait_s": sched.worker_wait_s,
        "poison_crashes": supervision.poison_crashes,
    }
    if clustered and config.role == "decode":
        options |= {
            "prefill_prefix": PEER_PREFIX,
            "min_prefill_tokens": config.cluster.min_prefill_tokens,
            "prefill_timeout_s": config.cluster.prefill_timeout_s,
        }
    cluster = (
        [
            ChildSpec(
                "kvcache",
                lambda: KVCache(
                    lease_s=config.cluster.lease_s,
                    fetch_timeout_s=config.cluster.prefill_timeout_s,
                    in_registry=registry,
                ),
            ),
            ChildSpec("cluster", lambda: ClusterNode(config, registry)),
        ]
        if clustered
        else []
    )

    def make_scheduler() -> Scheduler | ProcessActor:
        scheduler: Scheduler | ProcessActor
        if "scheduler" in config.server.isolate:
            scheduler = ProcessActor(
                "scheduler",
                SCHEDULER_TARGET,
                options,
                role="scheduler",
                socket_dir=socket_dir,
                env=child_environment(os.environ),
                in_registry=registry,
                imports={name: WORKER_TARGET for name in worker_names(config)}
                | {"metrics": METRICS_TARGET},
            )
        else:
            scheduler = Scheduler("scheduler", in_registry=registry, **options)
        latest["scheduler"] = scheduler
        return scheduler

    def engine_gave_up(exceeded: Exception) -> None:
        # A message, not a method call: the scheduler may run in another process.
        with contextlib.suppress(ActorError):
            handle.scheduler.cast_nowait(WorkerGaveUp(str(exceeded)))

    def make_subtree() -> Supervisor:
        return Supervisor(
            subtree_name(served.id),
            [
                ChildSpec(
                    "engine",
                    lambda: Supervisor(
                        "engine",
                        [
                            ChildSpec(
                                name, lambda i=i: make_worker(i), shutdown_timeout_s=10
                            )  # fmt: skip
                            for i, name in enumerate(worker_names(config))
                        ],
                        max_restarts=supervision.worker_max_restarts,
                        max_seconds=supervision.worker_restart_window_s,
                        on_give_up=engine_gave_up,
                    ),
                ),
                ChildSpec(
                    "metrics",
                    lambda: MetricsActor(
                        "metrics", metrics=metrics.for_model(served.id), in_registry=registry
                    ),
                ),
                *cluster,
                ChildSpec("scheduler", make_scheduler, shutdown_timeout_s=10),
            ],
            max_restarts=3,
            max_seconds=60,
        )

    spec = ChildSpec(subtree_name(served.id), make_subtree, shutdown_timeout_s=20)
    return spec, handle


def subtree_name(model_id: str) -> str:
    return f"model:{model_id}"
