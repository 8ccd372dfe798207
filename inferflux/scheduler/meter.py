"""The scheduler's numbers, reported as messages instead of written into prometheus.

The scheduler may run in a process of its own (`server.isolate`), and /metrics is served
by the server's process: so it holds no live metrics object. It records into a `Meter`
(counter increments, histogram observations, gauge values, finished requests by reason)
and casts what it recorded as one `MeterReport` to the `metrics` actor of its model's
subtree, after each message it handled and each step result it took in: at most one
report per engine step, like every other hot-path message. `MetricsActor`, in the
server's process, applies each report to the prometheus metrics labelled with its model.

In one process the report is a memory-channel hop; isolated, one more frame on the
scheduler's link (actors/_imports.py). The trade-off: a report not yet applied when the
scheduler's process dies is lost, as the unscraped counts of a crashed process would be.
Counters never go backwards across a scheduler restart (they live in the server's
process), which a registry inside the scheduler's process could not promise.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from actors import Actor, ActorError, ActorRef, Envelope

from ..metrics import Metrics

Counter = Literal[
    "prompt_tokens",
    "prefix_queries",
    "prefix_hits",
    "prompt_computed",
    "generation_tokens",
    "spec_drafted",
    "spec_accepted",
    "disagg_remote",
    "disagg_local",
    "disagg_fallback",
    "kv_transfer_bytes",
]
Histogram = Literal[
    "batch_size",
    "step_duration",
    "ttft",
    "itl",
    "e2e",
    "image_encode",
    "remote_prefill",
    "kv_transfer",
]
Gauge = Literal["running", "waiting", "kv_usage", "spec_acceptance"]


class MeterReport(msgspec.Struct, tag=True, frozen=True, omit_defaults=True):
    """What the scheduler recorded since its last report (names are Metrics attributes)."""

    counters: dict[Counter, int] = {}
    observations: dict[Histogram, list[float]] = {}
    gauges: dict[Gauge, float] = {}
    finished: dict[str, int] = {}
    """Requests that ended, by finish reason ("error" included)."""


class Meter:
    """Records between two reports; `report()` casts them (dropped if nobody listens)."""

    def __init__(self, sink: ActorRef | None) -> None:
        self.sink = sink
        self._clear()

    def _clear(self) -> None:
        self.counters: dict[Counter, int] = {}
        self.observations: dict[Histogram, list[float]] = {}
        self.gauges: dict[Gauge, float] = {}
        self.finished_by: dict[str, int] = {}

    def inc(self, name: Counter, n: int = 1) -> None:
        if n:
            self.counters[name] = self.counters.get(name, 0) + n

    def observe(self, name: Histogram, value: float) -> None:
        self.observations.setdefault(name, []).append(value)

    def set(self, name: Gauge, value: float) -> None:
        self.gauges[name] = value

    def finished(self, reason: str) -> None:
        self.finished_by[reason] = self.finished_by.get(reason, 0) + 1

    def report(self) -> None:
        if not (self.counters or self.observations or self.gauges or self.finished_by):
            return
        report = MeterReport(self.counters, self.observations, self.gauges, self.finished_by)
        self._clear()
        if self.sink is None:
            return
        try:
            self.sink.cast_nowait(report)
        except ActorError:
            pass  # the metrics actor restarting (or a full mailbox): these numbers are lost


class MetricsActor(Actor):
    """Applies the scheduler's MeterReports to prometheus (in the server's process)."""

    message_type = MeterReport
    mailbox_capacity = 4096

    def __init__(self, name: str, *, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.metrics = metrics
        self.reports = 0

    async def handle(self, message: Any, envelope: Envelope) -> Any:
        if isinstance(message, MeterReport):
            apply(self.metrics, message)
            self.reports += 1
        return None

    def details(self) -> dict[str, float | int | str]:
        return {"reports": self.reports}


def apply(metrics: Metrics, report: MeterReport) -> None:
    of = metrics.of
    for name, n in report.counters.items():
        if name.startswith("disagg_"):  # one counter, by path
            metrics.disagg.labels(**metrics.labels, path=name.removeprefix("disagg_")).inc(n)
        else:
            of(getattr(metrics, name)).inc(n)
    for hname, values in report.observations.items():
        histogram = of(getattr(metrics, hname))
        for value in values:
            histogram.observe(value)
    for gname, value in report.gauges.items():
        of(getattr(metrics, gname)).set(value)
    for reason, n in report.finished.items():
        metrics.success.labels(finished_reason=reason, **metrics.labels).inc(n)
