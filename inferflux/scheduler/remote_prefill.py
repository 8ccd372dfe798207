"""Disaggregated prefill, the decode side (issue 14): which requests a prefill node
computes, and asking one.

A request goes to a prefill node when its uncached prompt is at least `min_tokens` long,
nothing of it was generated yet, it wants more than one token, and some peer is not being
avoided. Its images go with it: the prefill node encodes them, and the state it hands
back holds their rows like any others. The scheduler has placed it first: its slot is reserved, so
this node's KV bounds the transfers in flight. The peer (a prefill node's scheduler,
reached over a node link) runs the prompt in its own continuous batch, samples the first
token from the prompt's logits and answers with it and a handle to the sequence's KV
state (a staging file there). This node's kvcache actor brings the state here (the same
file on one host, else pulled in chunks: kvcache/actor.py). The scheduler then admits the
request here with that state and that token, as the recompute of one generated token: the
text is the one unified serving gives (measured 40/40; re-decoding the last prompt token
instead diverges). Once the worker has loaded the state, its staging file is released.

A prefill node with a backlog refuses the prompt at once (Overloaded): it is prefilled
here, and the peer is asked again for the next one. Whatever else goes wrong (the peer is
down, partitioned, refuses, answers too late or for another model, the state cannot be
brought here) costs a local prefill, never an error: the peer is avoided for a while and
the request goes back to the front of the queue, to be prefilled here.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from actors import ActorError, ActorRef, Registry, Rejected

from ..kvcache.messages import Fetched, FetchKV, ReleaseKV, holder_name
from ..kvcache.placement import NodeKV
from ..messages import Admit, FinishReason, KVState, SeqOutput, TokenLogprob
from ..rate import DecayingRate
from .messages import Delta, Overloaded, Submit
from .meter import Meter
from .request import Request

log = logging.getLogger("inferflux.scheduler")
FETCH_GRACE_S = 5.0  # the kvcache's own fetch timeout answers first


@dataclass(frozen=True)
class Prefilled:
    """A prefill node's answer: the first token (its text, why it may be the last) and the
    prompt's KV state."""

    token_ids: list[int]
    text: str
    finish_reason: FinishReason | None
    kv_state: KVState | None
    logprobs: list[TokenLogprob]
    seconds: float


@dataclass
class PrefillPeers:
    """The prefill nodes this scheduler may use: the actors in its registry whose names
    start with `prefix` (each a prefill node's scheduler, imported over a node link by
    serving/cluster.py, and gone when its link closes), taken in turn, skipping any that
    failed lately. `seen` keeps the list current (Registry.watch)."""

    prefix: str
    min_tokens: int = 512
    timeout_s: float = 30.0
    avoid_s: float = 10.0
    names: list[str] = field(default_factory=list)
    _avoid_until: dict[str, float] = field(default_factory=dict)
    _turn: int = 0

    def seen(self, name: str, up: bool, why: str = "") -> None:
        if not self.prefix or not name.startswith(self.prefix):
            return
        if up and name not in self.names:
            self.names = sorted([*self.names, name])
        elif not up and name in self.names:
            self.names = [n for n in self.names if n != name]
            self._avoid_until.pop(name, None)

    def wants(self, request: Request, n_cached: int) -> bool:
        return (
            bool(self.names)
            and not request.local_only
            and not request.generated
            and request.sampling.max_tokens > 1
            and len(request.prompt) - n_cached >= self.min_tokens
            and self._available() is not None
        )

    def _available(self) -> str | None:
        now = time.monotonic()
        for i in range(len(self.names)):
            name = self.names[(self._turn + i) % len(self.names)]
            if self._avoid_until.get(name, 0.0) <= now:
                return name
        return None

    def choose(self) -> str | None:
        name = self._available()
        if name is not None:
            self._turn = self.names.index(name) + 1
        return name

    def failed(self, name: str) -> None:
        """Avoid this peer for a while; after that it is tried again (probed by use)."""
        self._avoid_until[name] = time.monotonic() + self.avoid_s


async def prefill_on(peer: ActorRef, request: Request, timeout_s: float) -> Prefilled | None:
    """Ask `peer` to prefill `request` and sample its first token; None when it takes longer
    than `timeout_s`. Raises what the peer or the link raise (ActorError, Rejected)."""
    started = time.monotonic()
    first_only = msgspec.structs.replace(request.sampling, max_tokens=1)
    # Its own id on the peer: several decode nodes share it, each numbering its requests.
    submit = Submit(
        secrets.randbits(62),
        request.prompt,
        first_only,
        request.priority,
        request.trace_id,
        principal=request.principal,
        images=request.images,
        export_kv=True,
        within_s=timeout_s,
    )
    token_ids: list[int] = []
    logprobs: list[TokenLogprob] = []
    text = ""
    finish: FinishReason | None = None
    state: KVState | None = None
    with trio.move_on_after(timeout_s):
        async with peer.stream(submit, first_timeout_s=timeout_s) as deltas:
            async for delta in deltas:
                assert isinstance(delta, Delta)
                token_ids += delta.token_ids
                logprobs += delta.logprobs
                text += delta.text
                finish = delta.finish_reason or finish
                state = delta.kv_state or state
        return Prefilled(token_ids, text, finish, state, logprobs, time.monotonic() - started)
    return None


class RemotePrefillPath:
    """The scheduler's side of a remote prefill (a part of Scheduler, kept here with the
    rest of the decode side): ask a peer, have this node's kvcache bring its KV state
    here, then admit the request with it, or fall back.
    Uses the scheduler's running set, KV manager, meter and its send/cast/finish paths."""

    # Provided by Scheduler.
    running: dict[int, Request]
    kv: NodeKV
    meter: Meter
    peers: PrefillPeers
    prompt_speed: DecayingRate  # this node's own, measured on its worker's steps
    registry: Registry
    kvcache: ActorRef
    fingerprints: list[str]
    _send: Callable[[Request, Delta], None]
    _cast: Callable[[int, Any], None]
    _finish: Callable[[Request, SeqOutput], None]
    _enqueue: Callable[..., None]
    _admit_waiting: Callable[[], None]
    _record_timing: Callable[[Request, float, int], None]

    async def _prefill_remotely(self, request: Request, admission: int) -> None:
        """Have a prefill node compute the prompt and its first token, then decode here;
        prefill here instead when the peer is busy or on any failure."""
        assert request.remote is not None
        peer = self.peers.choose()
        answer: Prefilled | None = None
        fetched: Fetched | None = None
        busy = False
        with request.remote:
            try:
                if peer is not None:
                    answer = await prefill_on(
                        ActorRef(peer, self.registry), request, self._remote_wait_s(request)
                    )
                if peer is not None and answer is not None:
                    fetched = await self._bring_state_here(request, peer, answer)
            except Rejected as exc:
                busy = isinstance(exc.error, Overloaded)
                if not busy:
                    log.warning("request %d trace %s: prefill node %s: %s", request.seq_id,
                                request.trace_id, peer, exc)  # fmt: skip
            except ActorError as exc:
                log.warning("request %d trace %s: prefill node %s: %s", request.seq_id,
                            request.trace_id, peer, exc)  # fmt: skip
        if self.running.get(request.seq_id) is not request or request.admissions != admission:
            self._release_fetched(fetched)
            return  # the worker restarted meanwhile: it was placed again
        request.remote = None
        if request.aborted:
            self._release_fetched(fetched)
            del self.running[request.seq_id]
            self.kv[request.worker].release(request.slot, None)
            request.envelope.reply(None)
        elif answer is None or not self._resume_prefilled(request, answer, fetched):
            self._release_fetched(fetched)
            if busy:  # a prefill node with a backlog: this prompt is computed here now
                self.meter.inc("disagg_local")
            else:
                if peer is not None and not request.aborted:
                    self.peers.failed(peer)
                self.meter.inc("disagg_fallback")
            del self.running[request.seq_id]
            self.kv[request.worker].release(request.slot, None)
            request.local_only = True
            self._enqueue(request, front=True)
        self._admit_waiting()
        self.meter.report()

    def _remote_wait_s(self, request: Request) -> float:
        """How long to wait for a prefill node: `cluster.prefill_timeout_s`, or as long as
        prefilling the prompt here would take at this node's measured speed, whichever is
        longer. A peer that is no faster than that is no gain; one that is, is worth the
        wait, even past the time-out (on a CPU a long prompt takes tens of seconds on
        either side). The prefill node refuses at once what it would not finish in it."""
        speed = self.prompt_speed.per_second
        here_s = len(request.prompt) / speed if speed else 0.0
        return max(self.peers.timeout_s, here_s)

    async def _bring_state_here(
        self, request: Request, peer: str, answer: Prefilled
    ) -> Fetched | None:
        """The answer's KV state, made loadable by this node's worker (kvcache/actor.py:
        the same file on one host, else pulled here); None when the answer needs none or
        is no use here. Raises what the kvcache raises when the state cannot come."""
        state = answer.kv_state
        if state is None:
            return None
        holder = holder_name(peer)
        fingerprint = self.fingerprints[request.worker]
        if not _needs_state(answer) or state.fingerprint != fingerprint:
            if state.fingerprint != fingerprint:
                log.warning(
                    "request %d trace %s: the prefill node's KV state does not fit this "
                    "worker (%s, here %s): serve the same model with the same --ctx-size "
                    "on both",
                    request.seq_id, request.trace_id, state.fingerprint, fingerprint,
                )  # fmt: skip
            with contextlib.suppress(ActorError):
                ActorRef(holder, self.registry).cast_nowait(ReleaseKV(state.name))
            return None
        fetched = await self.kvcache.call(
            FetchKV(holder, state), timeout_s=self.peers.timeout_s + FETCH_GRACE_S
        )
        assert isinstance(fetched, Fetched)
        return fetched

    def _release_fetched(self, fetched: Fetched | None) -> None:
        if fetched is not None:
            with contextlib.suppress(ActorError):
                self.kvcache.cast_nowait(ReleaseKV(fetched.state.name))

    def _release_staged(self, request: Request) -> None:
        """The worker has loaded the request's KV state (or refused it, or is gone): its
        staging file can go."""
        if request.staged:
            with contextlib.suppress(ActorError):
                self.kvcache.cast_nowait(ReleaseKV(request.staged))
            request.staged = ""

    def _resume_prefilled(
        self, request: Request, answer: Prefilled, fetched: Fetched | None
    ) -> bool:
        """Admit a request whose prompt a prefill node computed: its KV state and first
        token. False when the answer is no use here (the request is then prefilled here)."""
        if answer.finish_reason == "error" or len(answer.token_ids) != 1:
            return False
        if answer.finish_reason == "stop":  # the first token ended it: nothing to decode
            self.meter.inc("disagg_remote")
            self.meter.observe("remote_prefill", answer.seconds)
            self._record_timing(request, time.monotonic(), 1)
            request.generated = list(answer.token_ids)
            self._finish(request, SeqOutput(request.seq_id, answer.token_ids, answer.text, "stop"))
            return True
        if fetched is None:
            return False
        state = fetched.state
        self.meter.inc("disagg_remote")
        self.meter.observe("remote_prefill", answer.seconds)
        self.meter.observe("kv_transfer", fetched.seconds)
        self.meter.inc("kv_transfer_bytes", state.size)
        self._record_timing(request, time.monotonic(), 1)
        request.generated = list(answer.token_ids)
        request.admitted_tokens = request.prompt + request.generated
        request.prompt_done = state.n_tokens
        request.cached_tokens = max(request.cached_tokens, state.n_tokens)
        # The token now; its text comes from the worker, which replays it through its own
        # detokenizer (recompute's path, one token long), so stop strings and split
        # characters are held back as in a unified run.
        self._send(request, Delta(list(answer.token_ids), "", logprobs=answer.logprobs))
        if request.aborted:  # the client left just now
            self._release_fetched(fetched)
            del self.running[request.seq_id]
            self.kv[request.worker].release(request.slot, None)
            request.envelope.reply(None)
            return True
        request.staged = state.name
        self._cast(
            request.worker,
            Admit(
                request.seq_id,
                request.slot,
                request.admitted_tokens,
                request.sampling,
                state.n_tokens,
                n_generated=1,
                text_sent=request.text_sent,
                trace_id=request.trace_id,
                kv_state=state,
            ),
        )
        return True


def _needs_state(answer: Prefilled) -> bool:
    """Decoding goes on here from the first token: it was one token and ended nothing but
    the prefill job (max_tokens 1)."""
    return answer.finish_reason == "length" and len(answer.token_ids) == 1
