"""`inferflux` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="inferflux", description="InferFlux inference server")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="run the server")
    args = parser.parse_args(argv)
    if args.command == "run":
        print("inferflux: no model yet (the inference core has not landed)")
        sys.exit(0)


if __name__ == "__main__":
    main()
