"""The chaos harness's pieces: the request mix, the servers, the nemesis and its restart
budget, the invariants. `python tools/chaos.py` runs them."""
