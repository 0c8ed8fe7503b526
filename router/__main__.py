"""Command line: `python -m router route "PROMPT"` prints the routing decision as JSON.

`--messages` reads PROMPT as a JSON list of chat messages; the last user turn is routed.
Exit status 2 with the reason on stderr for input the router cannot route.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from router.errors import InvalidPromptError
from router.routing import load_router


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router", description="CoE prompt router")
    sub = parser.add_subparsers(dest="command", required=True)
    route = sub.add_parser("route", help="route one prompt and print the decision as JSON")
    route.add_argument("prompt", help="prompt text, or a JSON message list with --messages")
    route.add_argument("--messages", action="store_true", help="PROMPT is a JSON list of {role, content}")
    route.add_argument("--path", type=Path, help="artifact folder (default: cluster.paths.router_dir())")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    try:
        prompt = json.loads(args.prompt) if args.messages else args.prompt
    except json.JSONDecodeError as exc:
        print(f"error: --messages needs a JSON list of messages: {exc}", file=sys.stderr)
        return 2
    router = load_router(args.path)
    try:
        decision = router.route(prompt)
    except InvalidPromptError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(decision.model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
