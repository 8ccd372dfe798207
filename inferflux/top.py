"""`inferflux-top`: live view of a running server's actor tree (placeholder)."""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="inferflux-top", description="Live inspector of an InferFlux server's actor tree."
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server to inspect")
    parser.add_argument("--once", action="store_true", help="print one snapshot and exit")
    parser.parse_args(argv)
    print("inferflux-top: not implemented yet (see the observability issue)")
