"""`coe serve-config`: write a Ray Serve config so Ray's own CLI can run the app.

    coe serve-config --config cluster/configs/demo.yaml > serve.yaml
    serve run serve.yaml          # or: serve deploy serve.yaml (onto a running cluster)

The result parses with `ray.serve.schema.ServeDeploySchema`, the same schema KubeRay's
`serveConfigV2` uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from cluster.config import ClusterConfig, load_config
from cluster.serve_app import APP_BUILDER, grpc_options


def serve_config(config: ClusterConfig, config_path: Path) -> dict:
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.serve.http_host, "port": config.serve.http_port},
        "grpc_options": grpc_options(config),
        "applications": [
            {
                "name": config.serve.app_name,
                "route_prefix": config.serve.route_prefix,
                "import_path": APP_BUILDER,
                "args": {"config": str(config_path.resolve())},
            }
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coe serve-config", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    config = load_config(args.config, check_store=False)
    text = yaml.safe_dump(serve_config(config, args.config), sort_keys=False)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
