"""From the `[policy]` config to what the server wires in: checked once, at startup.

Everything that can be wrong (a store that will not decrypt, a missing key, a bad regex,
half an OIDC configuration) is a ConfigError here, before any port opens, so `inferflux
run` exits with a message instead of serving with a silently empty policy.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ..config import ConfigError, PolicyConfig
from .audit import AuditLog
from .engine import Policy
from .failures import AuthFailures
from .guardrails import Blocklist, OPAClient
from .limits import RateLimiter
from .oidc import OIDCSettings, OIDCVerifier
from .records import Limit
from .store import KEY_ENV, PolicyStore, PolicyStoreError, read_secret

log = logging.getLogger("inferflux.policy")


@dataclass
class PolicySetup:
    auth_required: bool
    make_policy: Callable[[], Policy]
    store: PolicyStore | None
    audit: AuditLog | None
    blocklist: Blocklist
    store_poll_s: float

    uses_opa: bool = False
    secret: bytes = b""
    """The store's passphrase when it came from the environment (a policy actor in its own
    process gets it in its environment: policy/isolated.py); empty with a key file."""

    @property
    def needs_prompt_text(self) -> bool:
        """The ingress detokenizes the prompt only when something reads it."""
        return bool(self.blocklist) or self.audit is not None or self.uses_opa


def is_active(config: PolicyConfig) -> bool:
    """Anything to enforce or record? If not, the policy stays the allow-all default."""
    return bool(
        config.auth == "required"
        or config.store_path
        or config.oidc_issuer
        or config.audit_log
        or config.blocklist
        or config.opa_url
        or config.requests_per_minute
        or config.tokens_per_minute
    )


def auth_required(config: PolicyConfig) -> bool:
    if config.auth == "auto":
        return bool(config.store_path or config.oidc_issuer)
    return config.auth == "required"


def build_policy(config: PolicyConfig, *, in_child: bool = False) -> PolicySetup | None:
    """`in_child`: for a policy actor in its own process (policy/isolated.py): no audit
    log (the ingress writes it), and no warnings the server already gave."""
    required = auth_required(config)
    if not required and not in_child:
        log.warning(
            "AUTHENTICATION IS OFF: anyone who can reach this port can generate. "
            "Use --policy-store (API keys) or [policy] oidc_* to require credentials."
        )
    if not is_active(config):
        return None
    store, secret = _open_store(config)
    if required and store is None and not config.oidc_issuer:
        raise ConfigError(
            "policy.auth = required needs credentials to check: a policy store "
            "(--policy-store) or an OIDC issuer (policy.oidc_issuer)"
        )
    if config.oidc_issuer and store is None and not in_child:
        log.warning(
            "OIDC without a policy store: tokens authenticate but grant nothing, because "
            "roles live in the store (inferflux roles set NAME --permissions ... --store PATH)"
        )
    try:
        blocklist = Blocklist(config.blocklist)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    oidc_settings = _oidc_settings(config)
    if config.auth_failures_per_minute < 0:
        raise ConfigError(
            f"policy.auth_failures_per_minute must be >= 0 (0: no limit), got "
            f"{config.auth_failures_per_minute}"
        )
    if config.opa_url and not config.opa_url.startswith(("http://", "https://")):
        raise ConfigError(f"policy.opa_url must be an http(s) URL, got {config.opa_url!r}")
    default_limit = Limit(
        requests_per_minute=config.requests_per_minute, tokens_per_minute=config.tokens_per_minute
    )

    def make_policy() -> Policy:
        return Policy(
            auth_required=required,
            store=store,
            limiter=RateLimiter(trio.current_time),
            default_limit=default_limit,
            blocklist=blocklist,
            oidc=OIDCVerifier(oidc_settings, trio.current_time) if oidc_settings else None,
            opa=(
                OPAClient(config.opa_url, config.opa_timeout_s, config.opa_fail_open)
                if config.opa_url
                else None
            ),
            opa_include_prompt=config.opa_include_prompt,
            anonymous_max_priority=config.anonymous_max_priority,
            failures=(
                AuthFailures(config.auth_failures_per_minute, trio.current_time)
                if config.auth_failures_per_minute
                else None
            ),
        )

    audit = (
        AuditLog(config.audit_log, debug=config.audit_debug, fail_closed=config.audit_fail_closed)
        if config.audit_log and not in_child
        else None
    )
    if audit is not None:
        try:
            audit.open()
        except OSError as exc:
            raise ConfigError(f"cannot open the audit log {config.audit_log}: {exc}") from None
    if not in_child:
        log.info(
            "policy: auth %s, store %s, oidc %s, opa %s, audit log %s",
            "required" if required else "off",
            config.store_path or "-",
            config.oidc_issuer or "-",
            config.opa_url or "-",
            config.audit_log or "-",
        )
    return PolicySetup(
        auth_required=required,
        make_policy=make_policy,
        store=store,
        audit=audit,
        blocklist=blocklist,
        store_poll_s=config.store_poll_s,
        uses_opa=bool(config.opa_url),
        secret=b"" if config.key_file else secret,
    )


def _open_store(config: PolicyConfig) -> tuple[PolicyStore | None, bytes]:
    if not config.store_path:
        return None, b""
    try:
        secret = read_secret(config.key_file or None)
    except PolicyStoreError as exc:
        raise ConfigError(str(exc)) from None
    finally:
        # Read once, at start (a restarted policy actor keeps the opened store): the
        # passphrase need not stay where every later child process would inherit it.
        os.environ.pop(KEY_ENV, None)
    try:
        return PolicyStore.open(config.store_path, secret), secret
    except PolicyStoreError as exc:
        raise ConfigError(str(exc)) from None


def _oidc_settings(config: PolicyConfig) -> OIDCSettings | None:
    fields = {
        "policy.oidc_issuer": config.oidc_issuer,
        "policy.oidc_audience": config.oidc_audience,
        "policy.oidc_jwks_url": config.oidc_jwks_url,
    }
    if not any(fields.values()):
        return None
    missing = [name for name, value in fields.items() if not value]
    if missing:
        raise ConfigError(f"OIDC needs {', '.join(missing)} as well")
    if not config.oidc_jwks_url.startswith("https://"):
        raise ConfigError(f"policy.oidc_jwks_url must be https://, got {config.oidc_jwks_url!r}")
    if config.oidc_ca_file:
        try:
            ssl.create_default_context(cafile=config.oidc_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"policy.oidc_ca_file {config.oidc_ca_file}: {exc}") from None
    return OIDCSettings(
        issuer=config.oidc_issuer,
        audience=config.oidc_audience,
        jwks_url=config.oidc_jwks_url,
        roles_claim=config.oidc_roles_claim,
        principal_claim=config.oidc_principal_claim,
        leeway_s=config.oidc_leeway_s,
        jwks_ttl_s=config.oidc_jwks_ttl_s,
        jwks_refresh_min_s=config.oidc_jwks_refresh_min_s,
        ca_file=config.oidc_ca_file,
    )
