"""Policy: authentication, authorization, rate limits, guardrails, audit (docs/security.md).

The actor (`actor.py`) routes messages to the decisions (`engine.py`); the store
(`store.py`) holds keys, roles and limits encrypted; `setup.py` turns `[policy]` into
what the server wires in; `cli.py` is `inferflux keys|roles|limits`.
"""
