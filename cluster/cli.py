"""`coe`: the project's command line. Each subcommand is a thin door into a module's own main."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module whose main(argv) runs it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "zoo": ("cluster.zoo", "build the demo expert zoo (or --tiny N test experts)"),
    "up": ("cluster.up", "start a local Ray cluster and serve a config (the main job)"),
    "serve-config": ("cluster.serve_config", "write a Ray Serve config for `serve run/deploy`"),
    "deploy": ("cluster.deploy", "deploy onto the Ray cluster at RAY_ADDRESS"),
    "route": ("router.__main__", "print the routing decision for a prompt"),
    "generate": ("deployments.grpc_client", "send a request over gRPC"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in SUBCOMMANDS:
        parser = argparse.ArgumentParser(prog="coe", description="CoE Serve command line")
        sub = parser.add_subparsers(dest="command", metavar="COMMAND")
        for name, (_, help_text) in SUBCOMMANDS.items():
            sub.add_parser(name, help=help_text)
        parser.print_help()
        return 0 if not argv or argv[0] in {"-h", "--help"} else 2
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    # `python -m router` has its own `route` subcommand: `coe route P` is `python -m router route P`.
    rest = ["route", *argv[1:]] if argv[0] == "route" else argv[1:]
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
