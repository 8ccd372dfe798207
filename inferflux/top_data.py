"""What `inferflux-top` reads and shows, shared by the live UI (top_app) and `--once` (top).

One fetcher, synchronous (urllib): `--once` calls it directly and the textual app runs it
in a thread. Two small GETs per poll, once a second, need neither a pooled client nor a
second, async copy of the same requests.
"""

from __future__ import annotations

import http.client
import urllib.request
from collections import deque
from dataclasses import dataclass, field

import msgspec
import pynng

from actors import ActorInfo, fetch_snapshot

_decode = msgspec.json.Decoder(ActorInfo).decode


@dataclass
class Sample:
    """One poll: the tree and the server's metrics (summed over label sets)."""

    tree: ActorInfo
    metrics: dict[str, float] = field(default_factory=dict)


def parse_metrics(text: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        try:
            totals[name] = totals.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return totals


def fetch(url: str, timeout_s: float = 5.0) -> Sample:
    if not url.startswith(("http://", "https://")):
        # The introspection socket serves the tree only; the panels fall back to the
        # numbers in the actors' details.
        return Sample(fetch_snapshot(url, timeout_s))
    base = url.rstrip("/")
    with urllib.request.urlopen(f"{base}/debug/actors", timeout=timeout_s) as r:
        tree = _decode(r.read())
    with urllib.request.urlopen(f"{base}/metrics", timeout=timeout_s) as r:
        metrics = parse_metrics(r.read().decode())
    return Sample(tree, metrics)


# What a failed poll may raise: unreachable or an HTTP error status (urllib's errors are
# OSErrors), a connection cut mid-body, a body that does not decode, a dead introspection socket.
FETCH_ERRORS = (
    OSError,
    http.client.HTTPException,
    ValueError,
    msgspec.DecodeError,
    pynng.NNGException,
)


# what both views show ------------------------------------------------------------------
COLUMNS = (
    "actor",
    "kind",
    "state",
    "pid",
    "mailbox",
    "in",
    "out",
    "msgs/s",
    "restarts",
    "last error / where",
)


def note(info: ActorInfo) -> str:
    """The last column: an actor's last error; for a node, its doors; for a link to
    another node, the peer's address, the link's state and its round-trip time; for an
    actor on another node, which node (then the error, if any)."""
    d = info.details
    if info.kind == "node":
        refused = f", refused {d['refused_peers']} peer(s)" if d.get("refused_peers") else ""
        return f"doors {d.get('doors') or '-'}{refused}"
    if info.kind == "node-link":
        rtt = float(d.get("rtt_ms", 0.0))
        text = f"link {d.get('link', '?')}, rtt {rtt:.2f} ms, at {d.get('address', '?')}"
    elif info.kind == "remote":
        remote = d.get("remote_name", info.name)
        text = f"on node {d.get('node') or '?'}" + (f" as {remote}" if remote != info.name else "")
    else:
        return info.last_error
    return f"{text}: {info.last_error}" if info.last_error else text


def _with_paths(tree: ActorInfo) -> list[tuple[str, int, ActorInfo]]:
    """Each actor with its path from the root and its depth. Names repeat across the
    models' subtrees (each has a `scheduler`), paths do not."""
    found: list[tuple[str, int, ActorInfo]] = []

    def walk(info: ActorInfo, path: str, depth: int) -> None:
        found.append((path, depth, info))
        for child in info.children:
            walk(child, f"{path}/{child.name}", depth + 1)

    walk(tree, tree.name, 0)
    return found


def actor_rows(tree: ActorInfo, rates: dict[str, float]) -> list[tuple[str, ...]]:
    """One row per actor, in tree order; `rates`: messages per second by path."""
    return [
        (
            "  " * depth + info.name,
            info.kind,
            info.state,
            str(info.pid or ""),
            str(info.mailbox_depth),
            str(info.messages_in),
            str(info.messages_out),
            f"{rates.get(path, 0.0):.1f}",
            str(info.restarts),
            note(info)[:100],
        )
        for path, depth, info in _with_paths(tree)
    ]


def _schedulers(tree: ActorInfo) -> list[ActorInfo]:
    return [info for info in tree.walk() if info.name == "scheduler"]


def _summed(tree: ActorInfo, key: str) -> float:
    return sum(float(s.details.get(key, 0)) for s in _schedulers(tree))


def scheduler_summary(sample: Sample, tok_s: float, ttft_s: float) -> str:
    """Every model's scheduler together (one line per model: `model_lines`)."""
    tree = sample.tree
    max_batch = max((float(s.details.get("max_batch", 0)) for s in _schedulers(tree)), default=0)
    return (
        f"running {_summed(tree, 'running'):.0f}  waiting {_summed(tree, 'waiting'):.0f}  "
        f"max batch {max_batch:.0f}  steps {_summed(tree, 'steps'):.0f}  "
        f"worker restarts {_summed(tree, 'worker_restarts'):.0f}  |  {tok_s:.1f} tok/s  "
        f"TTFT {ttft_s * 1000:.0f} ms (latest)"
    )


def model_lines(sample: Sample) -> list[str]:
    """One line per loaded model (its subtree `model:ID`: state, restarts, its
    scheduler's queue and KV cells), then how many more the store could load."""
    lines = []
    for info in sample.tree.walk():
        if not info.name.startswith("model:"):
            continue
        scheduler = info.find("scheduler")
        d = scheduler.details if scheduler else {}
        # A decode node (a cluster node in the subtree): its prompts on prefill nodes now,
        # and the KV states being brought here (kvcache/actor.py).
        clustered = any(child.kind == "node" for child in info.children)
        kvcache = info.find("kvcache")
        transfers = kvcache.details.get("transfers", 0) if kvcache else 0
        remote = (
            f", remote prefills {d.get('remote_prefills', 0)}, KV transfers {transfers}"
            if clustered
            else ""
        )
        lines.append(
            f"{info.name.removeprefix('model:')}: {info.state}, running {d.get('running', 0)}, "
            f"waiting {d.get('waiting', 0)}{remote}, KV cells {d.get('kv_cells_used', 0)}, "
            f"subtree restarts {info.restarts}"
        )
    manager = sample.tree.find("models")
    if manager is not None and manager.details.get("available"):
        lines.append(f"({manager.details['available']} more known, not loaded)")
    return lines


def kv_summary(sample: Sample) -> str:
    m = sample.metrics
    queries = m.get("inferflux:prefix_cache_queries_total", 0.0)
    hits = m.get("inferflux:prefix_cache_hits_total", 0.0)
    usage = m.get("inferflux:kv_cache_usage_perc", 0.0)
    return (
        f"KV cells used {_summed(sample.tree, 'kv_cells_used'):.0f} ({usage:.0%})  "
        f"cached slots {_summed(sample.tree, 'kv_slots_cached'):.0f}  "
        f"prefix-cache hit rate {hits / queries if queries else 0.0:.0%} of prompt tokens"
    )


class Rates:
    """Per-interval rates from two consecutive samples."""

    def __init__(self) -> None:
        self.previous: Sample | None = None
        self.tok_s_history: deque[float] = deque(maxlen=120)
        self.ttft_s = 0.0  # mean TTFT of the last interval that had first tokens

    def update(self, sample: Sample, dt: float) -> tuple[dict[str, float], float, float]:
        prev, self.previous = self.previous, sample
        if prev is None or dt <= 0:
            return {}, 0.0, 0.0
        before = {path: info.messages_in for path, _, info in _with_paths(prev.tree)}
        msgs = {
            path: (info.messages_in - before.get(path, info.messages_in)) / dt
            for path, _, info in _with_paths(sample.tree)
        }
        m, p = sample.metrics, prev.metrics
        name = "inferflux:generation_tokens_total"
        tok_s = max(0.0, (m.get(name, 0) - p.get(name, 0)) / dt)
        self.tok_s_history.append(tok_s)
        count = m.get("inferflux:time_to_first_token_seconds_count", 0) - p.get(
            "inferflux:time_to_first_token_seconds_count", 0
        )
        total = m.get("inferflux:time_to_first_token_seconds_sum", 0) - p.get(
            "inferflux:time_to_first_token_seconds_sum", 0
        )
        if count > 0:
            self.ttft_s = total / count
        return msgs, tok_s, self.ttft_s


def render(sample: Sample) -> str:
    """The plain-text snapshot (`--once`)."""
    rows = [COLUMNS] + actor_rows(sample.tree, {})
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    lines.append("")
    lines.append("scheduler: " + scheduler_summary(sample, 0.0, 0.0))
    lines.append("kv cache:  " + kv_summary(sample))
    lines.extend(f"model:     {line}" for line in model_lines(sample))
    return "\n".join(lines)
