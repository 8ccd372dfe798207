"""The pieces of tools/bench.py: servers to start, workloads, the load generator, the
engine's own limit (llama-batched-bench) and the tables. `python tools/bench.py` runs them."""
