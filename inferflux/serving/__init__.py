"""Serving several models: each loaded model is an engine subtree of its own (workers and a
scheduler) under the root supervisor, loaded at start, on demand, or by the admin API, and
unloaded when idle (keep_alive) or to make room (max_loaded_models, memory)."""
