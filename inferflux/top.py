"""`inferflux-top`: a live look inside a running server's actor tree.

    inferflux-top --url http://127.0.0.1:8000          # live terminal UI (textual)
    inferflux-top --url http://127.0.0.1:8000 --once   # one plain-text snapshot, for scripts
    inferflux-top --socket ipc:///tmp/inferflux-8000-....sock   # the tree over the local
                                                       # introspection socket (no HTTP)

It polls two read-only endpoints, `/debug/actors` (the supervision tree, one tree walk on
the server) and `/metrics`, once per `--interval`: nothing on the serving hot path.
Keys in the UI: `s` cycles the sort column, `f` filters actors by name, `p` pauses, `q`
quits.
"""

from __future__ import annotations

import argparse
import sys

from .top_data import FETCH_ERRORS, fetch, render


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="inferflux-top", description="Inspect a running InferFlux server's actor tree."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server to inspect")
    parser.add_argument(
        "--socket",
        help="read the tree from this introspection address instead (logged at start as "
        "'actor tree at ...')",
    )
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    args = parser.parse_args(argv)
    source = args.socket or args.url
    if args.once:
        try:
            print(render(fetch(source)))
        except FETCH_ERRORS as exc:
            print(f"inferflux-top: cannot read {source}: {exc}", file=sys.stderr)
            sys.exit(1)
        return
    from .top_app import TopApp  # textual loads only for the live UI

    TopApp(source, args.interval).run()


if __name__ == "__main__":
    main()
