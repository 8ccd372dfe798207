"""The scheduler: continuous batching over a node's device workers (one by default).

It owns the waiting queue (priority first, then fair turns between principals, then
arrival order: waiting.py) and the running set, and asks the KV placement
(kvcache/placement.py) which worker and slot each admitted sequence goes to. Admission
happens whenever something changes: a request arrives, or a step result frees or fills a
slot; the worker picks admitted sequences up at its next step (continuous batching). The
per-step token budget and chunked prefill live in the worker's step builder.

Preemption is by recompute: a higher-priority request that finds every slot running
preempts the lowest-priority running sequence, which goes back to the front of the queue
with prompt + generated tokens and resumes exactly where it was.

The scheduler is three parts: admission (this module), following the workers (their
results, crash recovery, poison requests: worker_results.py) and, on a decode node, the
remote prefills (remote_prefill.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from actors import Actor, ActorError, ActorRef, Envelope, Rejected

from ..kvcache import staging
from ..kvcache.placement import NodeKV
from ..messages import (
    Admit,
    Cancel,
)
from ..rate import DecayingRate
from .messages import (
    Abort,
    Delta,
    NotReady,
    Overloaded,
    SchedulerError,
    SchedulerMessage,
    Submit,
    WorkerGaveUp,
)
from .meter import Meter
from .remote_prefill import PrefillPeers, RemotePrefillPath
from .request import Request
from .waiting import WaitingQueue
from .worker_results import WorkerResults

log = logging.getLogger("inferflux.scheduler")
BACKLOG_SHARE = 0.9  # of a prefill job's time: the rest is for its answer and transfer


class Scheduler(WorkerResults, RemotePrefillPath, Actor):
    mailbox_capacity = 4096
    message_type = SchedulerMessage
    reply_type = Delta
    error_type = SchedulerError

    def __init__(
        self,
        name: str,
        *,
        workers: list[str],
        n_slots: int,
        cells_per_slot: int,
        meter: str = "",
        prefix_cache: bool = True,
        max_waiting: int = 256,
        max_waiting_per_principal: int | None = None,
        worker_wait_s: float = 30.0,
        poison_crashes: int = 2,
        prefill_prefix: str = "",
        min_prefill_tokens: int = 512,
        prefill_timeout_s: float = 30.0,
        kvcache: str = "kvcache",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        # The node's device workers, each with its own slots and prefix cache; a request
        # goes to one of them (kvcache/placement.py) and stays there.
        self.workers = [ActorRef(worker, self.registry) for worker in workers]
        self.kv = NodeKV(len(workers), n_slots, cells_per_slot, prefix_cache=prefix_cache)
        # Numbers go out as MeterReports to the `meter` actor (scheduler/meter.py).
        self.meter = Meter(ActorRef(meter, self.registry) if meter else None)
        self.max_waiting = max_waiting
        self.worker_wait_s = worker_wait_s
        self.poison_crashes = poison_crashes
        self.poisoned = 0  # requests failed for crashing the worker
        # Monotonic time since when no worker at all is attached (starting counts: a
        # restarted scheduler queues requests while it re-attaches, within worker_wait_s).
        self.down_since: float | None = time.monotonic()
        self.gave_up = ""  # why the worker's supervisor gave up, until a worker is back
        # One principal may hold a quarter of the queue by default: a burst from one key
        # leaves room for everyone else.
        share = max_waiting_per_principal or max(1, max_waiting // 4)
        self.waiting: WaitingQueue[Request] = WaitingQueue(max_waiting, share)
        self.running: dict[int, Request] = {}
        self.ready = trio.Event()  # set while some worker is attached
        # Per worker: a WorkerReady after the first one is a restarted worker.
        self.worker_seen = [False] * len(workers)
        self.steps = 0
        self.max_batch_seen = 0
        self.drafted = 0  # speculative decoding: draft tokens the worker verified
        self.accepted = 0
        self.worker_restarts = 0
        # The model and KV layout of each worker (WorkerReady): the KV states it loads.
        self.fingerprints = [""] * len(workers)
        self._unwatch_peers: Callable[[], None] = lambda: None
        # Disaggregated prefill (issue 14): prefill nodes' schedulers, imported by name.
        self.peers = PrefillPeers(prefill_prefix, min_prefill_tokens, prefill_timeout_s)
        self.kvcache = ActorRef(kvcache, self.registry)  # this node's KV handoffs
        # Prompt tokens computed and the seconds their steps took, decaying: this node's
        # prefill speed, which says whether a prefill job can be done in time.
        self.prompt_speed = DecayingRate(decay=0.9)

    # requests ------------------------------------------------------------------------
    async def started(self) -> None:
        if self.peers.prefix:
            for name in self.registry.names():
                self.peers.seen(name, True)
            self._unwatch_peers = self.registry.watch(self.peers.seen)
        for worker in range(len(self.workers)):
            self.nursery.start_soon(self._follow_worker, worker)
        self.nursery.start_soon(self._expire_while_down)

    async def stopping(self) -> None:
        self._unwatch_peers()

    def _down_too_long(self) -> bool:
        return (
            self.down_since is not None and time.monotonic() - self.down_since > self.worker_wait_s
        )

    def _down_reason(self) -> str:
        assert self.down_since is not None
        return (
            f"the model worker has been down for {time.monotonic() - self.down_since:.0f}s "
            "(crashing or restarting); try again later"
        )

    async def _expire_while_down(self) -> None:
        """Requests wait for a restarting worker, but not forever: after `worker_wait_s`
        every waiting request (streams already under way included) gets a 503."""
        while True:
            await trio.sleep(min(0.5, self.worker_wait_s / 4))
            if self.waiting and self._down_too_long():
                self._fail_waiting(NotReady(self._down_reason()))
                self.meter.report()

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        match message:
            case Submit():
                self._submit(message, envelope)
            case Abort(seq_id, _):
                self._abort(seq_id)
            case WorkerGaveUp(reason):
                self.worker_gave_up(reason)
        self.meter.report()
        return None

    def _refusal(self, error: SchedulerError) -> Rejected:
        return Rejected(self.name, error)

    def _submit(self, submit: Submit, envelope: Envelope) -> None:
        if self._down_too_long():
            envelope.fail(self._refusal(NotReady(self._down_reason())))
            return
        if self.gave_up:
            reason = f"the model worker keeps crashing ({self.gave_up})"
            envelope.fail(self._refusal(NotReady(reason)))
            return
        # With auth off every caller is "anonymous": one principal, nobody to share with.
        refusal = self.waiting.refusal(submit.principal, submit.principal != "anonymous")
        if refusal is None and submit.export_kv and submit.within_s:
            refusal = self._backed_up(submit)
        if refusal is not None:
            envelope.fail(self._refusal(Overloaded(f"server overloaded: {refusal}")))
            return
        envelope.defer()
        request = Request(submit.seq_id, submit.prompt, submit.sampling, submit.priority, envelope)
        request.principal = submit.principal
        request.generated = list(submit.generated)
        request.trace_id = submit.trace_id
        request.text_sent = submit.text_sent
        request.images = submit.images
        request.export_kv = submit.export_kv
        self._enqueue(request)
        self.meter.inc("prompt_tokens", len(submit.prompt))
        self._admit_waiting()

    def _backed_up(self, submit: Submit) -> str | None:
        """A prefill job that would not be done within most of its decode node's wait, at
        this node's measured speed, behind the prompt tokens it already has: refused at
        once, so the decode node computes it itself now rather than after a time-out."""
        speed = self.prompt_speed.per_second
        if not speed:
            return None  # not measured yet: take it
        backlog = sum(len(r.admitted_tokens) - r.prompt_done for r in self.running.values())
        backlog += sum(len(r.prompt) + len(r.generated) for r in self.waiting)
        backlog += len(submit.prompt)
        done_in = backlog / speed
        if done_in <= BACKLOG_SHARE * submit.within_s:
            return None
        return (
            f"prefill node backed up: {backlog} prompt tokens to compute at {speed:.0f} "
            f"tokens/s, ~{done_in:.0f}s against the {submit.within_s:.0f}s it may take"
        )

    def _enqueue(self, request: Request, front: bool = False) -> None:
        self.waiting.push(request, request.principal, request.priority, requeued=front)
        self._update_gauges()

    def _abort(self, seq_id: int) -> None:
        request = self.running.get(seq_id)
        if request is not None:
            if request.remote is not None:
                request.remote.cancel()  # _prefill_remotely ends it
            if not request.aborted:
                request.aborted = True
                self._cast(request.worker, Cancel(seq_id, request.trace_id))
            return
        for queued in self.waiting:
            if queued.seq_id == seq_id:
                queued.aborted = True  # dropped when it reaches the head of the queue

    # admission -----------------------------------------------------------------------
    def _held_back(self, request: Request) -> bool:
        """A suspect waits while another suspect runs (see the module docstring)."""
        return bool(request.crashes) and any(r.crashes for r in self.running.values())

    def _admit_waiting(self) -> None:
        while self.waiting and self.ready.is_set():
            skip = self._held_back if self.poison_crashes else None
            request = self.waiting.peek(skip)
            if request is None:
                break
            if request.aborted or request.envelope.closed:
                self.waiting.remove(request)
                continue
            tokens = request.prompt + request.generated
            placed = self.kv.place(tokens)
            if placed is None:
                self._maybe_preempt_for(request)
                break
            placement = placed.placement
            self.waiting.pop(skip)
            request.worker = placed.worker
            request.slot = placement.slot
            request.admitted_tokens = tokens
            request.prompt_done = placement.n_cached
            request.resident = False
            request.cached_tokens = max(request.cached_tokens, placement.n_cached)
            request.preempting = False
            request.admissions += 1
            self.running[request.seq_id] = request
            # The KV manager's own counts, placement by placement (see KVStats).
            self.meter.inc("prefix_queries", placement.n_queried)
            self.meter.inc("prefix_hits", placement.n_cached)
            remote = self.peers.wants(request, placement.n_cached)
            if self.peers.names and request.admissions == 1 and not remote:
                self.meter.inc("disagg_local")
            if remote:
                # The slot is reserved; its cells come later, from the prefill node.
                self.kv[request.worker].unadvertise(placement.slot)
                request.remote = trio.CancelScope()
                self.nursery.start_soon(self._prefill_remotely, request, request.admissions)
                continue
            self._cast(
                request.worker,
                Admit(
                    request.seq_id,
                    placement.slot,
                    tokens,
                    request.sampling,
                    placement.n_cached,
                    placement.copy_from,
                    len(request.generated),
                    request.text_sent,
                    request.trace_id,
                    request.images,
                    staging.new_name() if request.export_kv else "",
                ),
            )
        self._update_gauges()

    def _maybe_preempt_for(self, request: Request) -> None:
        candidates = [
            r
            for r in self.running.values()
            if not r.preempting and not r.aborted and r.remote is None
        ]
        if not candidates:
            return
        victim = min(candidates, key=lambda r: (r.priority, -r.arrival))
        if victim.priority < request.priority:
            victim.preempting = True
            self._cast(victim.worker, Cancel(victim.seq_id, victim.trace_id))

    def _cast(self, worker: int, message: Any) -> None:
        try:
            self.workers[worker].cast_nowait(message)
        except ActorError:
            pass  # worker down: _follow_worker re-admits its requests when it is back

    # views ---------------------------------------------------------------------------
    def _update_gauges(self) -> None:
        self.meter.set("running", len(self.running))
        self.meter.set("waiting", len(self.waiting))
        self.meter.set("kv_usage", self.kv.stats().usage)

    def details(self) -> dict[str, float | int | str]:
        stats = self.kv.stats()
        return {
            "ready": int(self.ready.is_set()),
            "running": len(self.running),
            "waiting": len(self.waiting),
            "steps": self.steps,
            "max_batch": self.max_batch_seen,
            "kv_cells_used": stats.cells_used,
            "kv_slots_cached": stats.cached,
            "prefix_hit_tokens": stats.prefix_hit_tokens,
            "worker_restarts": self.worker_restarts,
            # Per worker, in order: sequences running there ("-" while it is not attached).
            "running_by_worker": ",".join(
                str(kv.running) if attached else "-"
                for kv, attached in zip(self.kv.workers, self.kv.attached, strict=True)
            ),
            "poisoned": self.poisoned,
            # Disaggregated prefill: prompts being computed on a prefill node right now.
            "remote_prefills": sum(1 for r in self.running.values() if r.remote is not None),
        }
