"""`inferflux-top`: look inside a running server's actor tree.

`--once` prints one plain-text snapshot of the supervision tree and exits (for scripts and
tests). The live terminal UI comes with the observability issue; until then the command
without `--once` refreshes the same text every `--interval` seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request

import msgspec

from actors import ActorInfo

_decode = msgspec.json.Decoder(ActorInfo).decode


def fetch(url: str, timeout_s: float = 5.0) -> ActorInfo:
    with urllib.request.urlopen(f"{url.rstrip('/')}/debug/actors", timeout=timeout_s) as r:
        return _decode(r.read())


def render(root: ActorInfo) -> str:
    lines = [
        f"{'ACTOR':<28} {'KIND':<10} {'STATE':<10} {'PID':>7} {'MBOX':>5} "
        f"{'IN':>8} {'OUT':>8} {'RESTARTS':>8}  DETAILS / LAST ERROR"
    ]

    def walk(info: ActorInfo, depth: int) -> None:
        name = ("  " * depth + info.name)[:28]
        extra = " ".join(f"{k}={v}" for k, v in info.details.items())
        if info.last_error:
            extra = f"{extra} last_error={info.last_error!r}".strip()
        lines.append(
            f"{name:<28} {info.kind:<10} {info.state:<10} {info.pid or '':>7} "
            f"{info.mailbox_depth:>5} {info.messages_in:>8} {info.messages_out:>8} "
            f"{info.restarts:>8}  {extra}"
        )
        for child in info.children:
            walk(child, depth + 1)

    walk(root, 0)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="inferflux-top", description="Inspect a running InferFlux server's actor tree."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server to inspect")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    args = parser.parse_args(argv)
    try:
        while True:
            text = render(fetch(args.url))
            if args.once:
                print(text)
                return
            print("\033[2J\033[H" + text, flush=True)
            time.sleep(args.interval)
    except (urllib.error.URLError, OSError, msgspec.DecodeError) as exc:
        print(f"inferflux-top: cannot read {args.url}/debug/actors: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
