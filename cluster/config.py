"""The cluster configuration: topology, expert catalog, router settings and request limits.

One YAML file describes a deployment. Loading it sizes every expert from its checkpoint headers
and rejects, with the field and expert named, anything that could only fail later at serving
time: duplicate ids, a missing checkpoint, an expert no socket can hold (ARCHITECTURE invariant 4).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from cluster.paths import zoo_dir
from cluster.sampling_defaults import SamplingDefaults, checkpoint_sampling
from cluster.sizes import ByteSize, format_size

Device = Literal["cpu", "cuda"]


class _Strict(BaseModel):
    # A typo in a config key is a silent misconfiguration; refuse unknown keys instead.
    model_config = ConfigDict(extra="forbid", validate_default=True)  # defaults like "1MiB" parse too


class TopologyConfig(_Strict):
    """How many sockets there are and how much memory each tier has."""

    nodes: int = Field(1, ge=1, description="Nodes in the cluster; one DDR store and MemTier view each.")
    from_cluster: bool = Field(
        False,
        description="Take `nodes` and `sockets_per_node` from the running Ray cluster (nodes advertising "
        "`coe_socket`, or GPUs when device is cuda) instead of this file; `cluster.deploy` resolves it.",
    )
    sockets_per_node: int = Field(
        8, ge=1, description="Sockets (accelerators) per node: 8, as on an SN40L node or an 8-GPU server."
    )
    hbm_per_socket: ByteSize = Field(
        description="Expert bytes one socket may hold resident. Smaller than the catalog so paging happens."
    )
    ddr_per_node: ByteSize = Field(
        description="Expert bytes one node's object store may hold; the shared second tier."
    )
    kv_cache_per_socket: ByteSize = Field(
        "32MiB",
        description="The part of hbm_per_socket kept for the KV cache of running requests (invariant 8); "
        "the rest holds expert weights. 32MiB is ~1,450 tokens of a SmolLM2-135M expert (23,040 bytes a "
        "token in bf16): 8 requests of ~180 tokens. A request waits in its socket's queue while its KV "
        "would not fit; raise it for long prompts or big batches (on a GPU, gigabytes).",
    )
    device: Device = Field("cpu", description="'cuda' on GPU nodes (one GPU per socket), 'cpu' elsewhere.")
    cpus_per_socket: float = Field(
        0.5,
        gt=0,
        description="Ray CPUs per socket replica. On CPU this is also torch's thread count (RAY-NOTES), "
        "so size it from cores per node / sockets per node.",
    )

    @property
    def total_sockets(self) -> int:
        return self.nodes * self.sockets_per_node

    @property
    def weights_per_socket(self) -> int:
        """HBM bytes for expert weights: the socket's budget less its KV cache reserve."""
        return self.hbm_per_socket - self.kv_cache_per_socket

    @property
    def total_hbm_bytes(self) -> int:
        """Expert-weight bytes all sockets hold together (KV reserves excluded)."""
        return self.total_sockets * self.weights_per_socket

    @model_validator(mode="after")
    def _kv_inside_hbm(self) -> TopologyConfig:
        if self.kv_cache_per_socket >= self.hbm_per_socket:
            raise ValueError(
                f"topology.kv_cache_per_socket ({format_size(self.kv_cache_per_socket)}) must be smaller "
                f"than hbm_per_socket ({format_size(self.hbm_per_socket)}): the rest holds the weights"
            )
        return self


class ExpertConfig(_Strict):
    """One expert in the catalog. `size_bytes` and `dtype` are filled from checkpoint headers."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="The `model` name clients send.")
    checkpoint: str = Field(
        description="safetensors file, Hugging Face directory or GGUF file; relative paths are under "
        "`store_root`."
    )
    dtype: str = Field("bfloat16", description="Dtype the expert runs in on its socket.")
    system_prompt: str | None = Field(
        None, description="Overrides the system prompt stored in the checkpoint's metadata."
    )
    sampling: SamplingDefaults = Field(
        default_factory=SamplingDefaults,
        description="Default sampling for requests that leave a field out. Unset fields are filled at load "
        "from the checkpoint's generation_config.json (the model authors' recommendation, as vLLM does); "
        "request fields override both.",
    )
    size_bytes: int = Field(0, description="Filled at load: tensor bytes from the checkpoint headers.")
    checkpoint_dtype: str = Field("", description="Filled at load: dtype holding most bytes on disk.")

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        if value not in {"bfloat16", "float16", "float32"}:
            raise ValueError(f"dtype must be bfloat16, float16 or float32, got {value!r}")
        return value


class RouterConfig(_Strict):
    """How `model: "coe"` picks an expert; overrides the trained artifact where set."""

    artifact: str | None = Field(None, description="Router artifact dir; None = the demo router.")
    fallback_expert: str = Field(description="Expert for uncertain (high-entropy) classifications.")
    entropy_threshold: float | None = Field(
        None, ge=0, description="Entropy above which to fall back; None = the τ calibrated by router.train."
    )
    category_map: dict[str, str] | None = Field(
        None, description="Category -> expert id; None = the artifact's map (written by router.calibrate)."
    )


class LimitsConfig(_Strict):
    """Request limits enforced at the ingress; each refusal is a 400 that names the limit."""

    max_tokens: int = Field(512, ge=1, description="Largest `max_tokens` a request may ask for.")
    default_max_tokens: int = Field(64, ge=1, description="Used when a request omits `max_tokens`.")
    max_prompt_tokens: int = Field(2048, ge=1, description="Prompt tokens after the chat template.")
    max_body_bytes: ByteSize = Field("1MiB", description="Larger HTTP bodies are refused before parsing.")
    max_messages: int = Field(256, ge=1, description="Chat turns per request.")
    max_choices: int = Field(
        16,
        ge=1,
        description="Choices one request may ask for (n, or best_of, times the prompts of a completions "
        "list). Each is a row of its expert's batch with its own KV reservation; 16 = two full batches "
        "of the demo's max_batch_size, so one request cannot take a socket's batch for long.",
    )
    request_timeout_s: float = Field(120.0, gt=0, description="Ingress gives up on a socket after this.")
    place_timeout_s: float = Field(
        30.0,
        gt=0,
        description="How long a request waits for a socket with room (all HBM pinned) before a 503 / "
        "UNAVAILABLE: long enough to ride out a burst, short enough that clients can back off.",
    )
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="Work requests (generation, routing) one ingress replica runs at once. None = total "
        "sockets x serve.max_ongoing_requests: what the sockets can work on together; more only waits.",
    )
    max_queued: int = Field(
        64,
        ge=0,
        description="Work requests waiting for a slot beyond max_in_flight. One more is refused at once "
        "(503 + Retry-After) instead of queuing until it times out: at 10x overload clients hear 'back "
        "off' in milliseconds. 64 = one more full round of the demo's 8 sockets x 8.",
    )
    max_queue_wait_s: float = Field(
        30.0,
        gt=0,
        description="Longest a queued request waits for a slot before a 503; as place_timeout_s, long "
        "enough to ride out a burst.",
    )
    overload_retry_after_s: float = Field(
        1.0, gt=0, description="Retry-After on a 503 from a full queue: about one short request's time."
    )


class SecurityConfig(_Strict):
    """API keys and per-key rate limits, checked at the ingress before any tokenizer or model work.

    Keys never sit in this file: it travels in plain text (a ConfigMap, Serve's app config, the
    dashboard). The ingress reads them from the environment variable or file named here.
    """

    api_key_env: str = Field(
        "COE_API_KEY",
        description="Variable holding the API keys (one, or a comma-separated list), read in the ingress "
        "replica's process; in Kubernetes a Secret sets it in the pods. Unset = no auth (the local demo).",
    )
    api_keys_file: str | None = Field(
        None,
        description="A file of keys (comma or newline separated), e.g. a Secret mounted as a volume; its "
        "keys add to the variable's. None = the variable alone.",
    )
    require_api_key: bool = Field(
        False,
        description="Refuse to start without a key. False keeps `make serve` open as a local demo; "
        "k8s-gpu.yaml sets true so a missing Secret fails loudly instead of serving everyone.",
    )
    requests_per_s: float | None = Field(
        None,
        gt=0,
        description="Sustained requests/s per key (per client address when auth is off), any /v1 route; "
        "over it a 429 with Retry-After. None = no limit, as the local demo.",
    )
    request_burst: int = Field(
        20, ge=1, description="Requests a key may send at once above requests_per_s (the bucket's size)."
    )
    tokens_per_min: int | None = Field(
        None,
        ge=1,
        description="Tokens/min per key. A request is charged prompt bytes / 4 plus max_tokens when it "
        "arrives, as OpenAI estimates it: no tokenizer runs before a request may be refused. "
        "None = no limit.",
    )


class ObservabilityConfig(_Strict):
    """Metrics on GET /metrics and the per-request JSON log (deployments/metrics.py, request_log.py)."""

    metrics_push_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often each replica ships its metrics to the cluster's hub: a scrape sees other "
        "replicas' numbers at most this old (Prometheus scrapes every 15 s or so); one small actor call "
        "per process per interval.",
    )
    request_log: bool = Field(
        True,
        description="One JSON line per request on the ingress's stdout: cheap, and what an incident needs.",
    )
    request_log_path: str | None = Field(
        None,
        description="Also append the lines to this file on the ingress's node (None = stdout only, which "
        "Ray keeps in the replica's worker-*.out log).",
    )
    log_prompts: bool = Field(
        False,
        description="Put the prompt (or messages) in the request log. Off: prompts can hold personal data.",
    )


class ServeConfig(_Strict):
    """Ray Serve settings of the app."""

    http_host: str = Field("127.0.0.1", description="Loopback by default; set 0.0.0.0 in a pod.")
    http_port: int = Field(8000, description="Ray Serve's default HTTP port.")
    grpc_port: int = Field(9000, description="Ray Serve's default gRPC port.")
    max_ongoing_requests: int = Field(
        8, ge=1, description="Per socket replica; concurrent requests for one expert share a batch."
    )
    max_batch_size: int = Field(
        8,
        ge=1,
        description="Rows of one expert's running batch on a socket (continuous batching: a request joins "
        "at the next step). 8: on one CPU thread a decode step of 8 rows of SmolLM2-135M costs ~2x one "
        "row, so 8 requests get ~4x one's tokens/s; placement fills a batch before spreading.",
    )
    prefill_chunk_tokens: int = Field(
        256,
        ge=16,
        description="Prompt tokens prefilled per engine iteration; longer prompts are chunked with a decode "
        "step of the running rows between chunks, so a long prompt delays other requests' next token by "
        "one chunk (~0.2 s on one CPU thread for SmolLM2-135M), not by its whole prefill.",
    )
    app_name: str = Field("coe", description="Serve application name.")
    route_prefix: str = Field("/", description="HTTP route prefix of the ingress.")


class MemtierConfig(_Strict):
    """How HBM and DDR choose what to keep (memtier/policy.py; evidence in bench/results/policy.md)."""

    policy: Literal["adaptive", "lru"] = Field(
        "adaptive",
        description="adaptive = AdaptiveLRFU, recency and frequency with the balance learnt online "
        "(bench.policy: never more than 0.01 below the better of LRU and LFU on its traces); lru = least "
        "recently used.",
    )
    fixed_cost_bytes: ByteSize = Field(
        "20MB",
        description="A miss's fixed cost (actor hops, skeleton) in bytes at load bandwidth, so a small "
        "expert weighs a little more per byte held: ~20 ms at ~1 GB/s STORE reads on CPU (bench/results/"
        "switch.md). On GPUs ~50 ms at ~25 GB/s H2D is ~1.25GB; 0 ranks by frequency alone.",
    )
    score_half_life: float = Field(
        500.0,
        gt=0,
        description="Requests over which the adaptive policy forgets half of which recency/frequency balance "
        "hit best: a few hundred requests to compare, short enough to follow a shift.",
    )
    admission: bool = Field(
        False,
        description="Drop a newly paged-in expert after its request when it scores below every expert it "
        "displaced. Off: in demand paging an early drop never saves a miss (bench.policy ADAPTIVE+ADMIT).",
    )
    lease_hold_s: float = Field(
        1.0,
        ge=0,
        description="How long an ingress keeps a finished request's lease to give its next request for "
        "the same expert, sent to the same socket with no MemTier call (memtier/client.py). A kept lease "
        "pins nothing; evicting its expert revokes it. 0 = every request places and releases at MemTier. "
        "bench.memtier_scale (512 sockets, Zipf 1.0): 0.25 s reuses 0.68 of leases, 1 s 0.84, 4 s 0.87 "
        "(the HBM hit rate bounds it); a longer hold only keeps more idle leases.",
    )
    prefetch: bool = Field(
        False,
        description="Read likely experts STORE->DDR into free DDR room while a node's disk is idle, and page "
        "them DDR->HBM onto idle sockets (memtier/prefetch.py). Off by default: bench.prefetch measured "
        "0-19% fewer stalled requests (goal 30%), and it is not yet measured in serving.",
    )


class ClusterConfig(_Strict):
    """A whole deployment, as loaded from YAML."""

    name: str = "coe"
    store_root: str | None = Field(
        None,
        description="Directory relative checkpoints live under. None = $COE_ZOO_DIR or <repo>/zoo. On a "
        "real cluster use a path every node mounts (a job's working dir does not carry the zoo).",
    )
    topology: TopologyConfig
    experts: list[ExpertConfig] = Field(min_length=1)
    router: RouterConfig
    limits: LimitsConfig = LimitsConfig()
    security: SecurityConfig = SecurityConfig()
    serve: ServeConfig = ServeConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    memtier: MemtierConfig = MemtierConfig()

    @property
    def store_root_path(self) -> Path:
        return Path(self.store_root).expanduser().resolve() if self.store_root else zoo_dir()

    def checkpoint_path(self, expert: ExpertConfig) -> Path:
        path = Path(expert.checkpoint).expanduser()
        return path if path.is_absolute() else self.store_root_path / path

    def expert(self, expert_id: str) -> ExpertConfig:
        for expert in self.experts:
            if expert.id == expert_id:
                return expert
        raise KeyError(expert_id)

    @property
    def expert_ids(self) -> list[str]:
        return [expert.id for expert in self.experts]

    @model_validator(mode="after")
    def _check_catalog(self, info: ValidationInfo) -> ClusterConfig:
        seen: set[str] = set()
        for expert in self.experts:
            if expert.id in seen:
                raise ValueError(f"experts: duplicate expert id {expert.id!r}; ids must be unique")
            seen.add(expert.id)
        if not (info.context or {}).get("skip_store", False):
            self._size_experts()
        self._check_router(seen)
        return self

    def _size_experts(self) -> None:
        from memtier.store import CheckpointError, checkpoint_info

        for expert in self.experts:
            path = self.checkpoint_path(expert)
            try:
                header = checkpoint_info(path)
            except CheckpointError as err:
                raise ValueError(
                    f"experts[{expert.id}].checkpoint: {err}. Build the demo zoo with `coe zoo` "
                    f"(or `coe zoo --tiny N`) or fix the path."
                ) from err
            expert.size_bytes = header.size_bytes
            expert.sampling = expert.sampling.under(checkpoint_sampling(path))
            expert.checkpoint_dtype = header.dtype
            if expert.system_prompt is None and "coe.system_prompt" in header.metadata:
                expert.system_prompt = header.metadata["coe.system_prompt"]
        largest = max(self.experts, key=lambda e: e.size_bytes)
        topo = self.topology
        if topo.total_hbm_bytes < largest.size_bytes:
            raise ValueError(
                f"topology: total HBM {format_size(topo.total_hbm_bytes)} is below the largest expert "
                f"{largest.id!r} ({format_size(largest.size_bytes)}); add sockets or raise hbm_per_socket"
            )
        for expert in self.experts:
            if expert.size_bytes > topo.weights_per_socket:
                raise ValueError(
                    f"experts[{expert.id}]: size {format_size(expert.size_bytes)} exceeds what "
                    f"topology.hbm_per_socket {format_size(topo.hbm_per_socket)} leaves for weights beside "
                    f"kv_cache_per_socket {format_size(topo.kv_cache_per_socket)}; an expert must fit one "
                    f"socket (invariant 4): raise hbm_per_socket, lower kv_cache_per_socket or drop it"
                )
            if expert.size_bytes > topo.ddr_per_node:
                raise ValueError(
                    f"experts[{expert.id}]: size {format_size(expert.size_bytes)} exceeds "
                    f"topology.ddr_per_node {format_size(topo.ddr_per_node)}; it could never be staged in DDR"
                )

    def _check_router(self, expert_ids: set[str]) -> None:
        if self.router.fallback_expert not in expert_ids:
            raise ValueError(
                f"router.fallback_expert: {self.router.fallback_expert!r} is not an expert id "
                f"(known: {sorted(expert_ids)})"
            )
        for category, expert_id in (self.router.category_map or {}).items():
            if expert_id not in expert_ids:
                raise ValueError(
                    f"router.category_map[{category}]: {expert_id!r} is not an expert id "
                    f"(known: {sorted(expert_ids)})"
                )


def load_config(path: str | Path, *, check_store: bool = True) -> ClusterConfig:
    """Load and validate a YAML config; `check_store=False` skips reading checkpoint headers."""
    path = Path(path)
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a YAML mapping")
    return ClusterConfig.model_validate(data, context={"skip_store": not check_store})


def config_from_dict(data: dict, *, check_store: bool = True) -> ClusterConfig:
    """Validate an in-memory config (tests, `serve deploy` args)."""
    return ClusterConfig.model_validate(data, context={"skip_store": not check_store})
