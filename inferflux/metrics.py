"""Prometheus metrics, named as vLLM users know them, prefixed `inferflux:`.

One registry per server (not the process-global default), so tests can run several
servers in one process and read each one's numbers.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from actors import ActorInfo

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self, model: str, role: str = "unified") -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "role")
        r = self.registry

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(f"inferflux:{name}", doc, labels + extra, registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"inferflux:{name}", doc, labels, registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"inferflux:{name}", doc, labels, buckets=buckets, registry=r)

        self.ttft = histogram(
            "time_to_first_token_seconds", "Time to first token.", LATENCY_BUCKETS
        )
        self.itl = histogram("inter_token_latency_seconds", "Time between tokens.", LATENCY_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "Request latency.", LATENCY_BUCKETS)
        self.running = gauge("num_requests_running", "Sequences in the running batch.")
        self.waiting = gauge("num_requests_waiting", "Requests waiting for a slot.")
        self.kv_usage = gauge("kv_cache_usage_perc", "Fraction of KV cells in use (0-1).")
        self.prefix_queries = counter(
            "prefix_cache_queries", "Prompt tokens looked up in the prefix cache (none when off)."
        )
        self.prefix_hits = counter(
            "prefix_cache_hits", "Prompt tokens found in the prefix cache (not prefilled)."
        )
        self.prompt_tokens = counter("prompt_tokens_total", "Prompt tokens received.")
        self.prompt_computed = counter(
            "prompt_tokens_computed_total", "Prompt tokens actually prefilled (not reused)."
        )
        self.generation_tokens = counter("generation_tokens_total", "Tokens generated.")
        self.success = counter("request_success_total", "Finished requests.", ("finished_reason",))
        self.model_load = histogram(
            "model_load_seconds", "Time to load a model (its engine ready).", LATENCY_BUCKETS
        )
        self.api_requests = counter(
            "api_requests", "Generation requests started, by API (chat, responses...).", ("api",)
        )
        self.batch_size = histogram("batch_size", "Sequences per engine step.", BATCH_BUCKETS)
        self.images = counter("images_total", "Images in generation requests started.")
        self.image_prepare = histogram(
            "image_prepare_seconds",
            "Ingress time to decode a request's images and lay them out in its prompt.",
            LATENCY_BUCKETS,
        )
        self.image_encode = histogram(
            "image_encode_seconds",
            "Worker time to encode one image with the projector, off the step loop (images "
            "encoded between two steps are each observed as their mean).",
            LATENCY_BUCKETS,
        )
        self.step_duration = histogram(
            "step_duration_seconds", "Engine step time.", LATENCY_BUCKETS
        )
        # Speculative decoding (vLLM's spec_decode_* names).
        self.spec_drafted = counter(
            "spec_decode_num_draft_tokens", "Draft tokens verified (speculative decoding)."
        )
        self.spec_accepted = counter(
            "spec_decode_num_accepted_tokens", "Draft tokens accepted (speculative decoding)."
        )
        self.spec_acceptance = gauge(
            "spec_decode_acceptance_rate", "Accepted / drafted tokens since the server started."
        )
        # Disaggregated prefill (issue 14), on decode nodes with prefill peers.
        self.disagg = counter(
            "disagg_requests_total",
            "Fresh requests by where their prompt was computed: remote (a prefill node), "
            "local (here, by choice), fallback (here, after the remote prefill failed).",
            ("path",),
        )
        self.remote_prefill = histogram(
            "remote_prefill_seconds",
            "A remote prefill, asked to answered: the prompt computed on a prefill node "
            "(its queue included) and its first token sampled there.",
            LATENCY_BUCKETS,
        )
        self.kv_transfer = histogram(
            "kv_transfer_seconds",
            "A prefill node's KV state brought here once it answered: pulled in chunks "
            "from another host, or found on this one (mapped by the worker, not copied).",
            LATENCY_BUCKETS,
        )
        self.kv_transfer_bytes = counter(
            "kv_transfer_bytes_total", "Bytes of KV state received from prefill nodes."
        )
        self.labels = {"model": model, "role": role}

    def watch_tree(self, snapshot: Callable[[], ActorInfo]) -> None:
        """Export the actor runtime's numbers, read from the tree at scrape time."""
        self.registry.register(_TreeCollector(snapshot, self.labels))

    def for_model(self, model: str) -> Metrics:
        """The same metrics, labelled for one model (each model's scheduler gets one)."""
        view = copy.copy(self)
        view.labels = {**self.labels, "model": model}
        return view

    def of(self, metric):  # noqa: ANN001, ANN201 - prometheus child types are untyped
        return metric.labels(**self.labels)

    def of_api(self, api: str):  # noqa: ANN201
        return self.api_requests.labels(**self.labels, api=api)


class _TreeCollector:
    """Per actor: mailbox depth, messages in and out, restarts (one tree walk per scrape;
    nothing on the actors' hot paths)."""

    def __init__(self, snapshot: Callable[[], ActorInfo], labels: dict[str, str]) -> None:
        self.snapshot = snapshot
        self.labels = labels

    def collect(self) -> Iterator[Metric]:
        names = [*self.labels, "actor"]
        depth = GaugeMetricFamily(
            "inferflux:actor_mailbox_depth", "Messages waiting in an actor's mailbox.", labels=names
        )
        received = CounterMetricFamily(
            "inferflux:actor_messages_received", "Messages an actor took in.", labels=names
        )
        sent = CounterMetricFamily(
            "inferflux:actor_messages_sent", "Replies and results an actor sent.", labels=names
        )
        restarts = CounterMetricFamily(
            "inferflux:actor_restarts", "Restarts of an actor by its supervisor.", labels=names
        )
        for labels, info in self._walk(self.snapshot(), self.labels):
            label = [*labels.values(), info.name]
            depth.add_metric(label, info.mailbox_depth)
            received.add_metric(label, info.messages_in)
            sent.add_metric(label, info.messages_out)
            restarts.add_metric(label, info.restarts)
        yield from (depth, received, sent, restarts)

    @classmethod
    def _walk(
        cls, info: ActorInfo, labels: dict[str, str]
    ) -> Iterator[tuple[dict[str, str], ActorInfo]]:
        """Every actor with its labels: those in a model's subtree (`model:NAME`) are
        labelled with that model, so each model's "scheduler" is a series of its own."""
        if info.name.startswith("model:"):
            labels = {**labels, "model": info.name.removeprefix("model:")}
        yield labels, info
        for child in info.children:
            yield from cls._walk(child, labels)
