"""Structured-output overhead: 8 json_schema streams against 8 free ones on one server."""

from __future__ import annotations

import argparse
import json
import statistics

import trio

from .load import load
from .targets import Target

# Long enough that no stream completes its JSON before max_tokens (8+ chapters), so
# constrained and free streams generate the same token count.
STORY_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 60},
        "genre": {"enum": ["fantasy", "mystery", "comedy", "drama"]},
        "chapters": {
            "type": "array",
            "minItems": 8,
            "maxItems": 12,
            "items": {
                "type": "object",
                "properties": {
                    "number": {"type": "integer", "minimum": 1, "maximum": 99},
                    "title": {"type": "string", "maxLength": 60},
                    "mood": {"enum": ["happy", "sad", "tense", "calm"]},
                    "summary": {"type": "string", "maxLength": 200},
                    "twist": {"type": "boolean"},
                },
                "required": ["number", "title", "mood", "summary", "twist"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["title", "genre", "chapters"],
    "additionalProperties": False,
}
STORY_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "story", "schema": STORY_SCHEMA, "strict": True},
}


async def run_structured(target: Target, args: argparse.Namespace) -> dict:
    """8 concurrent json_schema streams vs 8 free ones, alternated `--repeats` times so
    drift on this shared machine hits both alike; medians compared."""
    await load(target, 1, 1, 16)  # warm-up
    runs: dict[str, list[float]] = {"free": [], "json_schema": []}
    for _ in range(args.repeats):
        for kind, response_format in (("free", None), ("json_schema", STORY_FORMAT)):
            result = await load(
                target, 8, args.rounds, args.max_tokens, response_format=response_format
            )
            runs[kind].append(result["tok_s"])
            print(f"  {target.name} {kind}: {result}", flush=True)
    free, constrained = statistics.median(runs["free"]), statistics.median(runs["json_schema"])
    return {
        "free_tok_s": free,
        "json_schema_tok_s": constrained,
        "overhead_pct": 100 * (1 - constrained / free),
        "runs": runs,
    }


def structured_main(args: argparse.Namespace, chosen: list[Target]) -> None:
    results = {}
    for target in chosen:
        print(f"{target.name}: {' '.join(target.command)}", flush=True)
        target.start(args.log_dir)
        try:
            results[target.name] = trio.run(run_structured, target, args)
        finally:
            target.stop()
    print()
    print("| server | free tok/s | json_schema tok/s | overhead |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['free_tok_s']:.1f} | {r['json_schema_tok_s']:.1f} "
            f"| {r['overhead_pct']:.1f}% |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
