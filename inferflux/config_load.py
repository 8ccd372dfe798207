"""Loading the configuration: a file, then INFERFLUX_* environment variables, then flags.

Precedence (later wins): built-in defaults < `--config FILE` < INFERFLUX_* environment
variables < command-line flags. Unknown keys are errors, so a typo never silently falls
back to a default. The schema itself is inferflux/config.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import msgspec

from .config import Config, ConfigError

# INFERFLUX_<SECTION>_<FIELD>, e.g. INFERFLUX_SERVER_PORT=9000, INFERFLUX_MODEL_PATH=...
ENV_PREFIX = "INFERFLUX_"


def load_config(
    path: str | None = None,
    env: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Config:
    raw: dict[str, Any] = {}
    if path:
        raw = _read_file(Path(path))
    environ = os.environ if env is None else env
    for section, fields in config_sections().items():
        for field_name, kind in fields.items():
            key = f"{ENV_PREFIX}{section.upper()}_{field_name.upper()}"
            if key in environ:
                raw.setdefault(section, {})[field_name] = _parse_env(key, environ[key], kind)
    if f"{ENV_PREFIX}ROLE" in environ:
        raw["role"] = environ[f"{ENV_PREFIX}ROLE"]
    for section, values in (overrides or {}).items():
        if section == "role":
            if values is not None:
                raw["role"] = values
            continue
        for field_name, value in values.items():
            if value is not None:
                raw.setdefault(section, {})[field_name] = value
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration{' in ' + path if path else ''}: {exc}") from None
    _check(config)
    return config


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = path.read_bytes()
    try:
        if path.suffix == ".toml":
            return msgspec.toml.decode(data)
        if path.suffix in (".yaml", ".yml"):
            return msgspec.yaml.decode(data)
    except (msgspec.DecodeError, ImportError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    raise ConfigError(f"config file must be .toml, .yaml or .yml, got {path}")


def config_sections() -> dict[str, dict[str, type]]:
    sections = {}
    for field in msgspec.structs.fields(Config):
        if field.name == "role":
            continue
        sections[field.name] = {f.name: f.type for f in msgspec.structs.fields(field.type)}
    return sections


def _parse_env(key: str, value: str, kind: type) -> Any:
    try:
        if getattr(kind, "__origin__", None) is list:  # a JSON list, e.g. policy.blocklist
            words = getattr(kind.__args__[0], "__origin__", None) is Literal
            if words and not value.lstrip().startswith("["):  # or words: scheduler,policy
                value = ",".join(f'"{w.strip()}"' for w in value.split(",") if w.strip())
                value = f"[{value}]"
            return msgspec.json.decode(value, type=kind)
        if getattr(kind, "__origin__", None) is Literal:  # checked with the rest, by msgspec
            return value
        if kind is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return kind(value)
    except ValueError:
        raise ConfigError(f"{key}={value!r} is not a valid {kind.__name__}") from None


def _check(config: Config) -> None:
    problems = []
    if not 0 <= config.server.port < 65536:
        problems.append(f"server.port must be 0-65535 (0: any free port), got {config.server.port}")
    if config.model.ctx_size < 16:
        problems.append(f"model.ctx_size must be at least 16, got {config.model.ctx_size}")
    if config.scheduler.n_parallel < 1:
        problems.append(f"scheduler.n_parallel must be >= 1, got {config.scheduler.n_parallel}")
    if config.scheduler.step_tokens < config.scheduler.n_parallel:
        problems.append(
            "scheduler.step_tokens must be >= scheduler.n_parallel "
            "(every running sequence decodes one token per step)"
        )
    spec = config.speculative
    if not 1 <= spec.max_draft_tokens <= 62:
        # A sequence's draft rows and its pending token stay under 64 rows, the size where
        # ggml's CPU attention changes kernel (and rounding): see worker/engine.py.
        problems.append(f"speculative.max_draft_tokens must be 1-62, got {spec.max_draft_tokens}")
    if not 1 <= spec.ngram_min <= spec.ngram_max <= 32:
        problems.append(
            "speculative.ngram_min and ngram_max must satisfy 1 <= ngram_min <= ngram_max "
            f"<= 32, got {spec.ngram_min} and {spec.ngram_max}"
        )
    if config.scheduler.max_step_ms < 0 and config.scheduler.max_step_ms != -1:
        problems.append(
            f"scheduler.max_step_ms must be >= 0 or -1 (the role's default), "
            f"got {config.scheduler.max_step_ms}"
        )
    if not 1 <= config.model.workers <= 64:
        problems.append(f"model.workers must be 1-64, got {config.model.workers}")
    server = config.server
    if server.chaos_poison_text and not server.chaos:
        problems.append("server.chaos_poison_text needs server.chaos (fault injection)")
    if bool(server.tls_cert_file) != bool(server.tls_key_file):
        problems.append("server.tls_cert_file and server.tls_key_file go together")
    if server.tls_client_ca_file and not server.tls_cert_file:
        problems.append("server.tls_client_ca_file needs server.tls_cert_file (HTTPS)")
    for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
        path = getattr(server, name)
        if path and not os.path.isfile(path):
            problems.append(f"server.{name}: no such file: {path}")
    problems += _cluster_problems(config)
    if problems:
        raise ConfigError("; ".join(problems))


def _cluster_problems(config: Config) -> list[str]:
    cluster, problems = config.cluster, []
    if config.role == "prefill" and not cluster.listen:
        problems.append("role prefill needs cluster.listen (--cluster-listen ADDR)")
    if config.role == "decode" and not cluster.prefill:
        problems.append("role decode needs cluster.prefill (--prefill ADDR[,ADDR...])")
    if config.role != "unified" and "scheduler" in config.server.isolate:
        problems.append(f"role {config.role} cannot isolate the scheduler yet")
    if config.role != "unified" and len(config.model.serve) > 1:
        problems.append(f"role {config.role} serves one model")
    tls = [cluster.ca_file, cluster.cert_file, cluster.key_file]
    if any(tls) and not all(tls):
        problems.append("cluster.ca_file, cert_file and key_file go together")
    for path in filter(None, tls):
        if not os.path.isfile(path):
            problems.append(f"cluster: no such file: {path}")
    if cluster.min_prefill_tokens < 1:
        problems.append("cluster.min_prefill_tokens must be >= 1")
    return problems
