"""Prometheus metrics, named as vLLM users know them, prefixed `inferflux:`.

One registry per server (not the process-global default), so tests can run several
servers in one process and read each one's numbers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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
        self.prefix_queries = counter("prefix_cache_queries", "Prompt tokens looked up.")
        self.prefix_hits = counter("prefix_cache_hits", "Prompt tokens found in the cache.")
        self.prompt_tokens = counter("prompt_tokens_total", "Prompt tokens received.")
        self.prompt_computed = counter(
            "prompt_tokens_computed_total", "Prompt tokens actually prefilled (not reused)."
        )
        self.generation_tokens = counter("generation_tokens_total", "Tokens generated.")
        self.success = counter("request_success_total", "Finished requests.", ("finished_reason",))
        self.batch_size = histogram("batch_size", "Sequences per engine step.", BATCH_BUCKETS)
        self.step_duration = histogram(
            "step_duration_seconds", "Engine step time.", LATENCY_BUCKETS
        )
        self.restarts = counter("actor_restarts_total", "Worker restarts seen.", ("actor",))
        self.labels = {"model": model, "role": role}

    def of(self, metric):  # noqa: ANN001, ANN201 - prometheus child types are untyped
        return metric.labels(**self.labels)
