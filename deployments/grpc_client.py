"""Client for the CoE gRPC API: a Python class and a command line.

    python -m deployments.grpc_client --target HOST:PORT --model coe "Integrate x^2 from 0 to 3"
    coe generate --grpc --target HOST:PORT --stream --max-tokens 32 "Explain TCP slow start"
    coe generate --grpc --route "What are the symptoms of flu?"      # routing decision only
    coe generate --grpc --experts                                      # experts and categories
    coe generate --grpc --memtier                                      # residency and hit rates

Every call sends the metadata ("application", APP): Serve's gRPC proxy picks the application by
it, and without it a cluster serving several apps answers NOT_FOUND. APP is the config's
`serve.app_name` ("coe" unless changed; `--config` reads it). With API keys on, it also sends
("authorization", "Bearer KEY"): KEY is `api_key`, else the first key in $COE_API_KEY. Serve's proxy
has no TLS: reach it inside the cluster or through a TLS-terminating gateway.

Python:

    from deployments.grpc_client import CoEClient

    with CoEClient("127.0.0.1:9000") as client:
        reply = client.generate("Solve 2x + 3 = 11", max_tokens=16)
        print(reply.text, reply.coe.expert, reply.coe.tier)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator, Sequence

import grpc
from google.protobuf.json_format import MessageToDict

from deployments.grpc_stubs import coe_pb2, coe_pb2_grpc

DEFAULT_TARGET = os.environ.get("COE_GRPC_TARGET", "127.0.0.1:9000")
DEFAULT_APP = "coe"


def generate_request(
    prompt: str,
    *,
    model: str = "coe",
    system: str | None = None,
    raw: bool = False,
    max_tokens: int | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    stop: Sequence[str] = (),
    seed: int | None = None,
) -> coe_pb2.GenerateRequest:
    """A chat request (one user turn, optional system turn), or a raw `prompt` with `raw=True`.

    Only the options given are set: unset ones take the server's defaults (proto3 presence).
    """
    request = coe_pb2.GenerateRequest(model=model, stop=list(stop))
    if raw:
        request.prompt = prompt
    else:
        if system:
            request.messages.add(role="system", content=system)
        request.messages.add(role="user", content=prompt)
    for name, value in (("max_tokens", max_tokens), ("temperature", temperature), ("top_p", top_p)):
        if value is not None:
            setattr(request, name, value)
    if seed is not None:
        request.seed = seed
    return request


def env_api_key() -> str | None:
    """The key a client sends by default: the first in $COE_API_KEY, the server's own variable."""
    keys = [k.strip() for k in os.environ.get("COE_API_KEY", "").split(",") if k.strip()]
    return keys[0] if keys else None


class CoEClient:
    """A channel to one CoE deployment; `timeout_s` is the deadline of each call (None: none)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        app: str = DEFAULT_APP,
        timeout_s: float | None = None,
        api_key: str | None = None,
    ):
        self.channel = grpc.insecure_channel(target)
        self.stub = coe_pb2_grpc.CoEStub(self.channel)
        api_key = api_key or env_api_key()
        auth = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.metadata = (("application", app), *auth)
        self.timeout_s = timeout_s

    def __enter__(self) -> CoEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method, request):
        return method(request, metadata=self.metadata, timeout=self.timeout_s)

    def generate(self, prompt: str, **options) -> coe_pb2.GenerateReply:
        """One completion; `options` as in `generate_request` (model, max_tokens, seed, ...)."""
        return self._call(self.stub.Generate, generate_request(prompt, **options))

    def stream(self, prompt: str, **options) -> Iterator[coe_pb2.GenerateChunk]:
        """Token chunks as they are generated; `.cancel()` on the returned iterator stops it."""
        return self._call(self.stub.GenerateStream, generate_request(prompt, **options))

    def route(self, prompt: str) -> coe_pb2.RouteReply:
        return self._call(self.stub.Route, coe_pb2.RouteRequest(prompt=prompt))

    def experts(self) -> coe_pb2.ListExpertsReply:
        return self._call(self.stub.ListExperts, coe_pb2.ListExpertsRequest())

    def memtier(self) -> coe_pb2.MemtierStatusReply:
        return self._call(self.stub.MemtierStatus, coe_pb2.MemtierStatusRequest())


# ---------------------------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coe generate", description="Send a request to CoE Serve over gRPC (default: generate)."
    )
    parser.add_argument("prompt", nargs="?", help="the prompt ('-' reads stdin)")
    parser.add_argument("--grpc", action="store_true", help="no-op: gRPC is this command's only transport")
    parser.add_argument("--target", help=f"HOST:PORT of Serve's gRPC proxy (default {DEFAULT_TARGET})")
    parser.add_argument("--app", help=f"Serve application name (default {DEFAULT_APP!r})")
    parser.add_argument("--config", help="cluster YAML: take the app name and gRPC port from it")
    parser.add_argument("--model", default="coe", help="an expert id, or 'coe' to let the router choose")
    parser.add_argument("--system", help="a system message before the prompt")
    parser.add_argument("--raw", action="store_true", help="send the text as `prompt` (no chat template)")
    parser.add_argument("--max-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", default=[], help="a stop string (repeatable)")
    parser.add_argument("--timeout", type=float, help="deadline of the call in seconds")
    parser.add_argument("--json", action="store_true", help="print replies as JSON")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--stream", action="store_true", help="print tokens as they arrive")
    mode.add_argument("--route", action="store_true", help="print the routing decision only")
    mode.add_argument("--experts", action="store_true", help="list the experts")
    mode.add_argument("--memtier", action="store_true", help="print residency, budgets and hit rates")
    return parser


def _connection(args: argparse.Namespace) -> tuple[str, str]:
    target, app = args.target, args.app
    if args.config:
        from cluster.config import load_config

        serve = load_config(args.config, check_store=False).serve
        target = target or f"127.0.0.1:{serve.grpc_port}"
        app = app or serve.app_name
    return target or DEFAULT_TARGET, app or DEFAULT_APP


def _info_line(coe: coe_pb2.CoEInfo, usage: coe_pb2.Usage, finish: str) -> str:
    parts = [f"expert={coe.expert}"]
    if coe.HasField("category"):
        parts.append(f"category={coe.category}" + (" (fallback)" if coe.fallback else ""))
    parts += [f"tier={coe.tier}", f"switch_s={coe.switch_s:.3f}", f"socket={coe.socket[:8]}"]
    parts += [f"tokens={usage.prompt_tokens}+{usage.completion_tokens}", f"finish={finish}"]
    return "[" + " ".join(parts) + "]"


def _as_dict(message) -> dict:
    return MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _print_json(message) -> None:
    print(json.dumps(_as_dict(message), indent=2))


def _print_memtier(status: coe_pb2.MemtierStatusReply) -> None:
    mib = 2**20
    print(
        f"hbm hit rate {status.hbm_hit_rate:.2%}  ddr hit rate {status.ddr_hit_rate:.2%}  "
        f"leases granted {status.leases_granted}  hbm evictions {status.hbm_evictions}  "
        f"store reads {status.store_reads}"
    )
    for node in status.nodes:
        print(
            f"node {node.node_id[:12]}  ddr {node.used_bytes / mib:.1f}/{node.ddr_bytes / mib:.1f} MiB  "
            f"{', '.join(node.residents) or '-'}"
        )
        for s in node.sockets:
            print(
                f"  socket {s.socket_id[:8]}  hbm {s.used_bytes / mib:.1f}/{s.hbm_bytes / mib:.1f} MiB  "
                f"pinned {s.pinned_bytes / mib:.1f} MiB  leases {s.leases}  {', '.join(s.residents) or '-'}"
            )


def _run(client: CoEClient, args: argparse.Namespace, prompt: str) -> None:
    if args.experts:
        reply = client.experts()
        if args.json:
            return _print_json(reply)
        print(f"{reply.routed_model}\t(routed: the router picks the expert)")
        for e in reply.experts:
            role = ", ".join(e.categories) + (" [fallback]" if e.fallback else "")
            print(f"{e.id}\t{e.size_bytes / 2**20:.1f} MiB\t{role}")
        return None
    if args.memtier:
        reply = client.memtier()
        return _print_json(reply) if args.json else _print_memtier(reply)
    if args.route:
        reply = client.route(prompt)
        return _print_json(reply)
    options = {
        "model": args.model,
        "system": args.system,
        "raw": args.raw,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "stop": args.stop,
        "seed": args.seed,
    }
    if not args.stream:
        reply = client.generate(prompt, **options)
        if args.json:
            return _print_json(reply)
        print(reply.text)
        print(_info_line(reply.coe, reply.usage, reply.finish_reason), file=sys.stderr)
        return None
    coe = None
    for chunk in client.stream(prompt, **options):
        if args.json:
            print(json.dumps(_as_dict(chunk)), flush=True)
            continue
        coe = chunk.coe if chunk.HasField("coe") else coe
        print(chunk.text, end="", flush=True)
        if chunk.finish_reason:
            print()
            if coe is not None:
                print(_info_line(coe, chunk.usage, chunk.finish_reason), file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if prompt is None and not (args.experts or args.memtier):
        parser.error("a prompt is needed (or --experts / --memtier)")
    target, app = _connection(args)
    with CoEClient(target, app=app, timeout_s=args.timeout) as client:
        try:
            _run(client, args, prompt)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
