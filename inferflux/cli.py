"""`inferflux` command line: `inferflux run [flags]`; `inferflux pull SOURCE`;
`inferflux models list|show|rm|ps`; `inferflux keys|roles|limits ...`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys

import trio

from transports import SocketDir, unique_address

from .config import Config, ConfigError
from .config_load import load_config
from .model import cli as model_cli
from .model.store import ModelStoreError
from .policy import cli as policy_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="inferflux", description="InferFlux inference server")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "run",
        help="serve a model over the OpenAI HTTP API",
        description="Serve a GGUF model. Without --model, the default "
        "model (SmolLM2-135M-Instruct Q4_1) is fetched on first run.",
    )
    run.add_argument(
        "--model",
        action="append",
        help="GGUF file, or a model name from the store, to serve; repeat it to serve "
        "several (default: the default model)",
    )
    run.add_argument("--model-name", help="model id clients send (default: file name)")
    run.add_argument("--mmproj", help="multimodal projector GGUF of the (first) model: images")
    run.add_argument("--host", help="bind address (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="HTTP port (default 8000)")
    run.add_argument(
        "--role",
        choices=["unified", "prefill", "decode"],
        help="unified (default): prefill and decode here; prefill: compute prompts for "
        "decode nodes (with --cluster-listen); decode: the OpenAI API, long prompts "
        "prefilled on --prefill nodes (docs/disaggregation.md)",
    )
    run.add_argument(
        "--cluster-listen", help="role prefill: where decode nodes join (cluster.listen)"
    )
    run.add_argument(
        "--prefill",
        type=lambda text: [word.strip() for word in text.split(",") if word.strip()],
        help="role decode: the prefill nodes, ADDR[,ADDR...] (cluster.prefill)",
    )
    run.add_argument("--config", help="TOML or YAML config file (see config/inferflux.toml)")
    run.add_argument("--n-parallel", type=int, help="sequences generated at once (default 16)")
    run.add_argument("--ctx-size", type=int, help="context window per sequence (default 2048)")
    run.add_argument("--threads", type=int, help="CPU threads for llama.cpp (default: all)")
    run.add_argument("--workers", type=int, help="device-worker processes per model (default 1)")
    run.add_argument("--gpu-layers", type=int, help="layers to offload to a GPU (CUDA builds)")
    run.add_argument("--no-prefix-cache", action="store_true", help="turn prefix reuse off")
    run.add_argument(
        "--chaos",
        action="store_true",
        help="accept fault-injection commands on the introspection socket (tools/chaos.py)",
    )
    run.add_argument(
        "--isolate",
        type=lambda text: [word.strip() for word in text.split(",") if word.strip()],
        help="actors to run each in a process of their own: scheduler,policy (server.isolate)",
    )
    run.add_argument(
        "--log-format", default="text", choices=["text", "json"], help="json: one object a line"
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--policy-store", help="encrypted policy store: require API keys (see keys)")
    run.add_argument("--policy-key-file", help="file with the store passphrase (default: env)")
    run.add_argument("--audit-log", help="append one JSON line per request to this file")
    run.add_argument("--tls-cert", help="PEM certificate: serve HTTPS (with --tls-key)")
    run.add_argument("--tls-key", help="PEM private key of --tls-cert")
    run.add_argument("--tls-client-ca", help="PEM CA bundle: require client certificates")
    run.add_argument(
        "--request-timeout", type=float, help="deadline of a generation request, seconds"
    )
    policy_cli.add_commands(commands)
    model_cli.add_commands(commands)
    args = parser.parse_args(argv)
    if args.command == "run":
        sys.exit(_run(args))
    if args.command in model_cli.COMMANDS:
        sys.exit(model_cli.run_command(args))
    if args.command in policy_cli.COMMANDS:
        sys.exit(policy_cli.run_command(args))


def _run(args: argparse.Namespace) -> int:
    handler = logging.StreamHandler()
    if args.log_format == "json":
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler])
    try:
        config = load_config(
            args.config,
            overrides={
                "server": {
                    "host": args.host,
                    "port": args.port,
                    "chaos": args.chaos or None,
                    "tls_cert_file": args.tls_cert,
                    "tls_key_file": args.tls_key,
                    "tls_client_ca_file": args.tls_client_ca,
                    "request_timeout_s": args.request_timeout,
                    "isolate": args.isolate,
                },
                "model": {
                    "serve": args.model,
                    "name": args.model_name,
                    "ctx_size": args.ctx_size,
                    "mmproj": args.mmproj,
                    "threads": args.threads,
                    "workers": args.workers,
                    "gpu_layers": args.gpu_layers,
                },
                "scheduler": {
                    "n_parallel": args.n_parallel,
                    "prefix_cache": False if args.no_prefix_cache else None,
                },
                "role": args.role,
                "cluster": {"listen": args.cluster_listen, "prefill": args.prefill},
                "policy": {
                    "store_path": args.policy_store,
                    "key_file": args.policy_key_file,
                    "audit_log": args.audit_log,
                },
            },
        )
        _check_port_free(config.server.host, config.server.port)
    except (ConfigError, ModelStoreError, PortInUse) as exc:
        print(f"inferflux: {exc}", file=sys.stderr)
        return 2
    # Every ipc socket of this server (worker links, introspection) lives in a directory
    # only this user can enter, removed at exit (transports.SocketDir).
    sockets = SocketDir("inferflux")
    try:
        socket_dir = sockets.open()
    except OSError as exc:
        print(f"inferflux: no private directory for sockets: {exc}", file=sys.stderr)
        return 2
    try:
        return _build_and_serve(config, socket_dir)
    finally:
        sockets.close()


def _build_and_serve(config: Config, socket_dir: str) -> int:
    try:
        from .server import build_server

        introspection = unique_address("ipc", f"inferflux-{config.server.port}", socket_dir)
        server = build_server(config, introspection_address=introspection, socket_dir=socket_dir)
    except (ModelStoreError, ValueError) as exc:  # a model that is not one, not there
        print(f"inferflux: cannot start: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"inferflux: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a model that does not load...
        print(f"inferflux: cannot start: {exc}", file=sys.stderr)
        return 1
    if config.server.chaos:
        logging.getLogger("inferflux").warning(
            "CHAOS MODE IS ON (--chaos or INFERFLUX_SERVER_CHAOS): anyone who can reach the "
            "introspection socket %s can crash actors and break links. Never in production.",
            introspection,
        )
    trio.run(_serve, server)
    return 0


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class PortInUse(Exception):
    pass


def _check_port_free(host: str, port: int) -> None:
    """Fail before loading anything when the HTTP port is taken (a clear message, not a
    traceback from deep inside hypercorn)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PortInUse(f"cannot listen on {host}:{port}: {exc.strerror}") from None


async def _serve(server) -> None:  # noqa: ANN001
    from .server import run_server

    log = logging.getLogger("inferflux")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def serve_then_leave(task_status: trio.TaskStatus[object]) -> None:
                await run_server(server, task_status=task_status)
                nursery.cancel_scope.cancel()  # the tree stopped: stop waiting for signals

            await nursery.start(serve_then_leave)
            log.info(
                "serving %s on http://%s:%d/v1 (role %s); actor tree at %s",
                ", ".join(model_id for model_id, _, _ in server.models),
                server.config.server.host,
                server.port,
                server.config.role,
                server.introspection.address if server.introspection else "-",
            )
            async for signum in signals:
                log.info(
                    "%s: draining (up to %.0fs), then exiting",
                    signal.Signals(signum).name,
                    server.config.server.drain_timeout_s,
                )
                server.root.request_stop()
                break
