"""`coe up`: the main job. Build what is missing, start a local Ray cluster, serve, wait for Ctrl-C.

Prints the endpoint and working `curl` and `openai` examples once every socket has registered.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from cluster.paths import REPO_ROOT

DEFAULT_CONFIG = REPO_ROOT / "cluster" / "configs" / "demo.yaml"


def ensure_built(config_path: Path) -> None:
    """Build the zoo the config needs (demo or tiny) and the router artifact, if missing."""
    from cluster import zoo
    from cluster.config import load_config
    from cluster.paths import zoo_dir

    raw = load_config(config_path, check_store=False)
    if raw.store_root is None:
        tiny = [e for e in raw.experts if e.checkpoint.startswith("tiny/")]
        if tiny:
            zoo.build_tiny(zoo_dir(), len(tiny))
        if len(tiny) < len(raw.experts):
            zoo.build_demo(zoo_dir())
    if raw.router.artifact is None:
        from router import load_router

        load_router(None)  # trains and writes the demo router once


def wait_until_ready(base_url: str, expected_sockets: int, timeout_s: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{base_url}/healthz", timeout=5).json()
            if health.get("sockets", 0) >= expected_sockets:
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(1)
    raise TimeoutError(f"sockets did not register within {timeout_s}s")


def examples(base_url: str, expert: str, auth_line: str = "", key_env: str | None = None) -> str:
    """The banner; `key_env` names the variable clients read their key from when auth is on."""
    header = f' -H "Authorization: Bearer ${key_env}"' if key_env else ""
    api_key = f"os.environ['{key_env}']" if key_env else "'none'"
    return f"""
CoE Serve is up at {base_url}  (OpenAI API under {base_url}/v1)
{auth_line}

  curl {base_url}/v1/chat/completions{header} -H 'content-type: application/json' \\
    -d '{{"model": "coe", "max_tokens": 32,
         "messages": [{{"role": "user", "content": "What is the derivative of x^2?"}}]}}'

  python -c "import os; from openai import OpenAI; c = OpenAI(base_url='{base_url}/v1', api_key={api_key}); \\
r = c.chat.completions.create(model='{expert}', max_tokens=16, \\
messages=[{{'role': 'user', 'content': 'Hello!'}}]); print(r.choices[0].message.content)"

  curl{header} {base_url}/v1/memtier      # residency per node and socket, hit rates
  curl{header} {base_url}/v1/models       # every expert, plus "coe" (auto-routed)

Ctrl-C stops the cluster.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coe up", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--exit-after-ready", action="store_true", help="exit once serving (for smoke tests)")
    args = parser.parse_args(argv)

    ensure_built(args.config)
    import ray
    from ray import serve

    from cluster.api_keys import auth_banner, load_api_keys
    from cluster.config import load_config
    from cluster.local import start_local_ray
    from cluster.serve_app import deploy_application

    config = load_config(args.config)
    keys = load_api_keys(config.security)  # refuses to start on a set-but-empty variable
    auth_line = auth_banner(config.security)
    start_local_ray(config)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        deploy_application(config)
        base_url = f"http://{config.serve.http_host}:{config.serve.http_port}"
        print(f"deployed; waiting for {config.topology.total_sockets} sockets to register ...")
        wait_until_ready(base_url, config.topology.total_sockets)
        key_env = config.security.api_key_env if keys else None
        print(examples(base_url, config.experts[0].id, auth_line, key_env), flush=True)
        while not stop.is_set() and not args.exit_after_ready:
            stop.wait(1)
    finally:
        print("shutting down ...", file=sys.stderr)
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
