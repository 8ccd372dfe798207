"""`inferflux keys | roles | limits`: manage the policy store from the command line.

    inferflux keys create --name N --scopes generate[,models:read,admin] --store PATH
          [--models a,b] [--max-tokens N] [--max-priority N] [--max-concurrent N]
    inferflux keys list --store PATH [--json]
    inferflux keys revoke ID_OR_NAME --store PATH
    inferflux roles set NAME --permissions generate[,...] [--models a,b] [--max-...] --store PATH
    inferflux roles list | delete NAME --store PATH
    inferflux limits set PRINCIPAL --rpm N --tpm N --store PATH   (key:<id>, role:<name>, *)
    inferflux limits list | delete PRINCIPAL --store PATH

The store's key: INFERFLUX_POLICY_KEY (a passphrase) or --key-file. `keys create` prints
the new key once, alone on the last line of stdout. A running server picks changes up
within `policy.store_poll_s`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from . import ops
from .messages import AdminOp
from .store import PolicyStore, PolicyStoreError, read_secret

COMMANDS = ("keys", "roles", "limits")


def add_commands(commands: Any) -> None:
    """Add the subcommands to `inferflux`'s subparsers."""

    def store_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--store", required=True, help="policy store file")
        parser.add_argument(
            "--key-file",
            "--policy-key-file",
            dest="key_file",
            help="file holding the store passphrase (default: $INFERFLUX_POLICY_KEY)",
        )

    def grant_args(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--models", default="", help="allowed model ids, comma-separated")
        parser.add_argument("--max-tokens", type=int, help="ceiling on max_tokens")
        parser.add_argument(
            "--max-priority", type=int, help="highest priority allowed (default: 0)"
        )
        parser.add_argument(
            "--max-concurrent", type=int, help="generations running at once (default: no limit)"
        )

    keys = commands.add_parser("keys", help="create, list, revoke API keys").add_subparsers(
        dest="action", required=True
    )
    create = keys.add_parser("create", help="create a key; prints it once, on the last line")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scopes", required=True, help="comma-separated: generate, models:read, admin"
    )
    grant_args(create)
    create.add_argument("--rpm", type=int, help="requests per minute for this key")
    create.add_argument("--tpm", type=int, help="tokens per minute for this key")
    store_args(create)
    listing = keys.add_parser("list", help="list keys (never the keys themselves)")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    store_args(listing)
    revoke = keys.add_parser("revoke", help="revoke a key by id (or unique name)")
    revoke.add_argument("key")
    store_args(revoke)

    roles = commands.add_parser("roles", help="roles for OIDC principals").add_subparsers(
        dest="action", required=True
    )
    role_set = roles.add_parser("set", help="create or replace a role")
    role_set.add_argument("name")
    role_set.add_argument("--permissions", required=True, help="comma-separated")
    grant_args(role_set)
    store_args(role_set)
    store_args(roles.add_parser("list", help="list roles"))
    role_delete = roles.add_parser("delete", help="delete a role")
    role_delete.add_argument("name")
    store_args(role_delete)

    limits = commands.add_parser("limits", help="rate limits").add_subparsers(
        dest="action", required=True
    )
    limit_set = limits.add_parser("set", help="set a principal's (or role:NAME, *) limits")
    limit_set.add_argument("principal")
    # Left out: inherited (role:NAME, *, the server default); 0: unlimited.
    limit_set.add_argument("--rpm", type=int, help="requests per minute (0: unlimited)")
    limit_set.add_argument("--tpm", type=int, help="tokens per minute (0: unlimited)")
    store_args(limit_set)
    store_args(limits.add_parser("list", help="list limits"))
    limit_delete = limits.add_parser("delete", help="delete a principal's limits")
    limit_delete.add_argument("principal")
    store_args(limit_delete)


def run_command(args: argparse.Namespace) -> int:
    try:
        secret = read_secret(args.key_file)
        creating = args.action in ("create", "set")
        store = PolicyStore.open(args.store, secret, create=creating)
        return _dispatch(args, store)
    except (PolicyStoreError, ops.OpError) as exc:
        print(f"inferflux: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"inferflux: cannot write the policy store {args.store}: {exc}", file=sys.stderr)
        return 1


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _grant_body(args: argparse.Namespace, permissions: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"models": _split(args.models)}
    if args.max_tokens is not None:
        body["max_tokens"] = args.max_tokens
    if args.max_priority is not None:
        body["max_priority"] = args.max_priority
    if args.max_concurrent is not None:
        body["max_concurrent"] = args.max_concurrent
    return body | {"permissions": permissions}


# (command, action) -> the admin operation it is.
_OPS: dict[tuple[str, str], AdminOp] = {
    ("keys", "create"): "keys.create",
    ("keys", "list"): "keys.list",
    ("keys", "revoke"): "keys.revoke",
    ("roles", "set"): "roles.put",
    ("roles", "list"): "roles.list",
    ("roles", "delete"): "roles.delete",
    ("limits", "set"): "limits.put",
    ("limits", "list"): "limits.list",
    ("limits", "delete"): "limits.delete",
}
# The positional argument naming what the operation is about, per command.
_NAME_ARG = {"keys": "key", "roles": "name", "limits": "principal"}


def _body(op: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """The request body the admin API would get for this command line."""
    if op == "keys.create":
        body = _grant_body(args, _split(args.scopes))
        body["scopes"] = body.pop("permissions")
        body["name"] = args.name
        if args.rpm is not None:
            body["requests_per_minute"] = args.rpm
        if args.tpm is not None:
            body["tokens_per_minute"] = args.tpm
        return body
    if op == "roles.put":
        return _grant_body(args, _split(args.permissions))
    if op == "limits.put":
        return {"requests_per_minute": args.rpm, "tokens_per_minute": args.tpm}
    return None


def _dispatch(args: argparse.Namespace, store: PolicyStore) -> int:
    op = _OPS[(args.command, args.action)]
    name = getattr(args, _NAME_ARG[args.command], None) or ""
    answer = ops.apply(store, op, name, _body(op, args))
    if op == "keys.create":
        scopes = ",".join(_split(args.scopes))  # as given, as the request holds them
        print(f"created key {answer['id']} ({answer['name']}) with scopes {scopes}")
        print("the key is shown only this once; store it now:")
        print(answer["key"])
    elif op == "keys.list":
        _print_keys(answer["data"], args.json)
    elif op == "keys.revoke":
        print(f"revoked key {answer['id']} ({answer['name']})")
    elif op == "roles.put":
        shown = {k: v for k, v in answer.items() if k != "name"}
        print(f"role {name}: {json.dumps(shown)}")
    elif op == "limits.put":
        shown = {k: v for k, v in answer.items() if k != "principal"}
        print(f"limits of {name}: {json.dumps(shown)} (a field not shown is inherited)")
    elif op == "roles.delete":
        print(f"deleted role {name}")
    elif op == "limits.delete":
        print(f"deleted limits of {name}")
    else:  # roles.list, limits.list
        print(json.dumps(answer, indent=2))
    return 0


def _print_keys(keys: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(keys, indent=2))
        return
    print(f"{'ID':<13} {'NAME':<20} {'SCOPES':<28} {'CREATED':<20} STATUS")
    for key in keys:
        created_at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(key["created_at"]))
        status = "revoked" if key["revoked_at"] else "active"
        scopes = ",".join(key["scopes"])
        print(f"{key['id']:<13} {key['name'][:20]:<20} {scopes:<28} {created_at:<20} {status}")
