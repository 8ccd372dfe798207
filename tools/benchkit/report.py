"""Markdown tables from the raw results: per workload, each server's tok/s and TTFT, its
share of the engine's limit, and ratios measured in the same run."""

from __future__ import annotations

CPU_KEYS = ("cpu_server_ms", "cpu_children_ms", "cpu_client_ms")
CPU_HEADER = " CPU ms/token: server process | its child processes (InferFlux's workers) | client |"
SHARED_HEADER = (
    "| shared-prefix workload (16 concurrent, ~1,300-token system prompt) "
    "| TTFT p50 (s) | TTFT p95 (s) | tok/s |"
)


def _ratio_rows(ours: str, results: dict, peers: list[str], concurrency: list[int]) -> list[str]:
    lines = []
    for name in peers:
        for c in concurrency:
            a, b = results[ours].get(c), results[name].get(c)
            if a and b:
                lines.append(
                    f"| {ours} vs {name} | {c} | {a['tok_s'] / b['tok_s']:.2f}x"
                    f" | {b['ttft_p50'] / a['ttft_p50']:.2f}x faster |"
                )
    return lines


def workload_table(
    workload: str, results: dict[str, dict], concurrency: list[int], limits: dict | None
) -> str:
    """`results`: server -> concurrency -> measurement, for one workload."""
    with_limit = bool(limits)
    lines = [
        f"Workload `{workload}`:",
        "",
        "| server | concurrency | tok/s | TTFT p50 (s) | TTFT p95 (s) |"
        + (" share of engine limit |" if with_limit else "")
        + CPU_HEADER,
        "|---|---|---|---|---|" + ("---|" if with_limit else "") + "---|---|---|",
    ]
    if limits:
        for c in concurrency:
            lim = limits[c]
            lines.append(
                f"| engine limit (llama-batched-bench -npp {lim['prompt_tokens']} "
                f"-ntg {lim['gen_tokens']}) | {c} | {lim['tok_s']:.1f} | | | 100% | | | |"
            )
    for name, by_c in results.items():
        for c in concurrency:
            r = by_c.get(c)
            if r is None:
                continue
            line = f"| {name} | {c} | {r['tok_s']:.1f} | {r['ttft_p50']:.2f} "
            line += f"| {r['ttft_p95']:.2f} |"
            if limits:
                line += f" {100 * r['tok_s'] / limits[c]['tok_s']:.0f}% |"
            line += "".join(f" {r[k]:.2f} |" if k in r else " |" for k in CPU_KEYS)
            lines.append(line)
    ours = [n for n in results if n.startswith("inferflux") and "baseline" not in n]
    peers = [n for n in results if not n.startswith("inferflux")]
    ratio_lines = []
    if len(ours) > 1 and "inferflux (speculative off)" in results:
        for name in ours:
            if name != "inferflux (speculative off)":
                ratio_lines += _ratio_rows(
                    name, results, ["inferflux (speculative off)"], concurrency
                )
    if "inferflux (baseline)" in results:
        for name in ours:
            ratio_lines += _ratio_rows(name, results, ["inferflux (baseline)"], concurrency)
    for name in ours:
        ratio_lines += _ratio_rows(name, results, peers, concurrency)
    if ratio_lines:
        lines += [
            "",
            "| ratio (same run) | concurrency | tok/s | TTFT p50 |",
            "|---|---|---|---|",
            *ratio_lines,
        ]
    return "\n".join(lines)


def full_report(
    all_results: dict[str, dict], workloads: list[str], concurrency: list[int], limits: dict
) -> str:
    """`all_results`: server -> {workload -> concurrency -> measurement, "shared": ...}."""
    parts = []
    for workload in workloads:
        by_server = {n: r[workload] for n, r in all_results.items() if workload in r}
        if by_server:
            parts.append(workload_table(workload, by_server, concurrency, limits.get(workload)))
    shared = {n: r["shared"] for n, r in all_results.items() if "shared" in r}
    if shared:
        lines = [SHARED_HEADER, "|---|---|---|---|"]
        for name, r in shared.items():
            lines.append(
                f"| {name} | {r['ttft_p50']:.2f} | {r['ttft_p95']:.2f} | {r['tok_s']:.1f} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)
