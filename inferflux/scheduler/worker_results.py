"""Following a scheduler's device workers (a part of Scheduler): their step results, a
worker that dies, and requests that kill it.

Each worker's results arrive on its own Attach stream. A step's outputs advance their
requests (tokens to the clients, KV bookkeeping, finishing); a finished request frees its
slot for the next admission.

A worker that dies takes its sequences' KV with it: every request running there goes
back to the front of the queue with prompt + the tokens its client already has, to be
recomputed on whichever worker is ready (the others run on): clients see a pause, not an
error.

A request that crashes the worker itself (a poison request) must not take everyone down
with it, restart after restart. Every request running when a worker dies becomes a
suspect until it makes progress (a new token). Suspects are re-admitted one at a time
(others run as usual), so when a worker dies again with a suspect that made no progress,
that suspect is the cause: after `poison_crashes` such crashes it is failed alone with a
clear error, and everyone else resumes. 0 turns this off (the chaos harness does: it
kills workers at random, which no detector can tell from a poison request).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from actors import ActorError, ActorRef, Rejected

from ..kvcache.placement import NodeKV
from ..messages import Attach, Cancel, SeqOutput, StepResult, WorkerReady
from ..rate import DecayingRate
from .messages import Delta, GenerationFailed, NotReady, SchedulerError
from .meter import Meter
from .request import Request
from .waiting import WaitingQueue

log = logging.getLogger("inferflux.scheduler")


class WorkerResults:
    """The scheduler's side of its workers (a part of Scheduler)."""

    # Provided by Scheduler.
    workers: list[ActorRef]
    kv: NodeKV
    running: dict[int, Request]
    waiting: WaitingQueue[Request]
    meter: Meter
    ready: trio.Event
    down_since: float | None
    gave_up: str
    worker_seen: list[bool]
    worker_restarts: int
    fingerprints: list[str]
    poison_crashes: int
    poisoned: int
    steps: int
    max_batch_seen: int
    drafted: int
    accepted: int
    prompt_speed: DecayingRate
    _enqueue: Callable[..., None]
    _admit_waiting: Callable[[], None]
    _cast: Callable[[int, Any], None]
    _refusal: Callable[[SchedulerError], Rejected]
    _release_staged: Callable[[Request], None]
    _update_gauges: Callable[[], None]

    async def _follow_worker(self, worker: int) -> None:
        while True:
            try:
                async with self.workers[worker].stream(
                    Attach(), buffer=100_000, first_timeout_s=1.0
                ) as results:
                    async for item in results:
                        if isinstance(item, WorkerReady):
                            self.fingerprints[worker] = item.fingerprint
                            self._on_worker_ready(worker)
                        else:
                            self._on_step(worker, item)
                        self.meter.report()
            except ActorError:
                pass
            if self.kv.attached[worker]:
                self._on_worker_lost(worker)
                self.meter.report()
            await trio.sleep(0.05)

    def worker_gave_up(self, reason: str) -> None:
        """The workers' supervisor exceeded its restart intensity: every request that
        waits on them (streams under way included) ends now with a 503 error, and new
        requests get 503 until a worker is ready again."""
        self.gave_up = reason
        for worker in range(len(self.workers)):
            self._on_worker_lost(worker)
        self._fail_waiting(NotReady(f"the model worker keeps crashing ({reason}); try again later"))

    def _fail_waiting(self, error: NotReady) -> None:
        """End every waiting request (re-queued streams included) with `error`."""
        for request in self.waiting.clear():
            log.warning("request %d trace %s: %s", request.seq_id, request.trace_id, error.message)
            request.envelope.fail(self._refusal(error))
            self.meter.finished("error")
        self._update_gauges()

    def _on_worker_ready(self, worker: int) -> None:
        self.gave_up = ""
        if self.worker_seen[worker]:
            self.worker_restarts += 1
        self.worker_seen[worker] = True
        self.down_since = None
        self.kv.attach(worker)
        self._fail_poison()
        self.ready.set()
        self._admit_waiting()

    def _fail_poison(self) -> None:
        """Fail, alone, every request that was running in `poison_crashes` worker crashes
        in a row without making progress: it is what crashes the worker."""
        if not self.poison_crashes:
            return
        for request in [r for r in self.waiting if r.crashes >= self.poison_crashes]:
            self.waiting.remove(request)
            self.poisoned += 1
            error = (
                f"this request was running in {request.crashes} model worker crashes in a "
                "row without making progress; it was failed alone so that the others go on"
            )
            log.warning("request %d trace %s: %s", request.seq_id, request.trace_id, error)
            request.envelope.fail(self._refusal(GenerationFailed(error)))
            self.meter.finished("error")
        self._update_gauges()

    def _on_worker_lost(self, worker: int) -> None:
        """Every sequence running on the worker goes back to the queue, to be recomputed
        (on whichever worker is ready) from prompt + the tokens its client already has."""
        self.kv.detach(worker)
        if not self.kv.any_attached:
            self.ready = trio.Event()
            self.down_since = self.down_since or time.monotonic()
        lost = [r for r in self.running.values() if r.worker == worker]
        for request in sorted(lost, key=lambda r: r.arrival, reverse=True):
            if request.remote is not None:  # placed again, and asked again
                request.remote.cancel()
                request.remote = None
            self._release_staged(request)
            request.crashes += 1  # a suspect until it makes progress
            del self.running[request.seq_id]
            self._enqueue(request, front=True)
        self._admit_waiting()

    def _on_step(self, worker: int, result: StepResult) -> None:
        self.steps += 1
        self.max_batch_seen = max(self.max_batch_seen, result.n_seqs)
        self.meter.observe("batch_size", result.n_seqs)
        self.meter.observe("step_duration", result.duration_s)
        if result.n_drafted:
            self._count_drafts(result.n_drafted, result.n_accepted)
        for _ in range(result.images_encoded):  # the worker sends their total: each its mean
            self.meter.observe("image_encode", result.encode_s / result.images_encoded)
        now = time.monotonic()
        prompt_computed = 0
        for out in result.outputs:
            request = self.running.get(out.seq_id)
            if request is None or request.worker != worker:
                continue
            if request.staged:  # the worker has its KV state, or refused it
                self._release_staged(request)
            if out.n_prompt_computed:
                prompt_computed += out.n_prompt_computed
                request.prompt_done += out.n_prompt_computed
                if request.prompt_done >= len(request.admitted_tokens) and not request.resident:
                    request.resident = True
                    self.kv[worker].prompt_resident(request.slot, request.admitted_tokens)
            if out.token_ids:
                request.crashes = 0  # progress: not what crashes the worker
                self._record_timing(request, now, len(out.token_ids))
                request.generated.extend(out.token_ids)
                self.kv[worker].grew(request.slot, out.kv_tokens)
            if out.finish_reason is None:
                if out.token_ids or out.text:
                    self._send(request, Delta(out.token_ids, out.text, logprobs=out.logprobs))
                continue
            self._finish(request, out)
        self.meter.inc("prompt_computed", prompt_computed)
        self.prompt_speed.observe(prompt_computed, result.duration_s)
        self._admit_waiting()

    def _count_drafts(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted
        self.meter.inc("spec_drafted", drafted)
        self.meter.inc("spec_accepted", accepted)
        self.meter.set("spec_acceptance", self.accepted / self.drafted)

    def _record_timing(self, request: Request, now: float, n: int) -> None:
        if not request.first_token_at:
            request.first_token_at = now
            self.meter.observe("ttft", now - request.arrival)
        else:
            self.meter.observe("itl", (now - request.last_token_at) / n)
        request.last_token_at = now
        self.meter.inc("generation_tokens", n)

    def _finish(self, request: Request, out: SeqOutput) -> None:
        reason, token_ids, text = out.finish_reason, out.token_ids, out.text
        del self.running[request.seq_id]
        held = (
            request.admitted_tokens
            + request.generated[len(request.admitted_tokens) - len(request.prompt) :]
        )
        if reason == "preempted" or (
            reason == "cancelled" and request.preempting and not request.aborted
        ):
            self.kv[request.worker].release(request.slot, None)
            if token_ids or text:
                self._send(request, Delta(token_ids, text, logprobs=out.logprobs))
            self._enqueue(request, front=True)
            return
        self.kv[request.worker].release(request.slot, held[: out.kv_tokens])
        if reason == "cancelled":
            request.envelope.reply(None)
            return
        if reason == "error":
            log.warning("request %d trace %s: %s", request.seq_id, request.trace_id, out.error)
            request.envelope.fail(self._refusal(GenerationFailed(out.error)))
            self.meter.finished("error")
            return
        self._send(
            request,
            Delta(
                token_ids,
                text,
                reason,
                len(request.prompt),
                len(request.generated),
                request.cached_tokens,
                out.logprobs,
                out.kv_state,
            ),
        )
        request.envelope.reply(None)
        self.meter.finished(reason)
        self.meter.observe("e2e", time.monotonic() - request.arrival)

    def _send(self, request: Request, delta: Delta) -> None:
        request.text_sent += len(delta.text)
        request.envelope.send(delta)
        if request.envelope.closed and not request.aborted:
            request.aborted = True
            self._cast(request.worker, Cancel(request.seq_id, request.trace_id))
