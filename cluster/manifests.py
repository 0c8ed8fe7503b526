"""Check the KubeRay manifests in k8s/ offline, as strictly as `kubectl apply` would, and more.

A typo in a RayService surfaces only when an operator applies it to a GPU cluster, and some never
surface: the API server prunes unknown fields silently unless asked not to, Ray Serve ignores unknown
keys in `serveConfigV2` (a string to Kubernetes, so no schema sees it), and nothing compares the pods
with the cluster config they serve. This module closes those gaps without a cluster:

1. Each document is checked against the openAPIV3Schema of its KubeRay CRD (shared/kuberay-crds,
   or `$COE_KUBERAY_CRDS`), converted to a JSON Schema that rejects unknown fields the way
   `kubectl apply --validate=strict` does. Embedded Pod templates are part of those schemas.
2. Each `serveConfigV2` is parsed with Ray's own `ServeDeploySchema`, plus an unknown-key check.
3. Across documents: the cluster config each app or job names (`args.config`, `--config`) must be
   mounted from a ConfigMap on every pod, must load (`config_from_dict`), and the pods must match
   it: `coe_socket` and GPUs per pod = sockets_per_node, worker pods = nodes, object store >= DDR.
   Token auth on, dashboard not published. API keys on (`security.require_api_key`), the key in
   every Ray container from a Secret (never a literal), and a committed Secret holding no key.

`python -m cluster.manifests k8s/` runs all of it and exits 1 on any problem. Without the CRDs
(a fresh clone has no shared/ beside it) step 1 cannot run: the CLI says which variable to set, and
`--no-crds` (or `schema=False`) runs steps 2 and 3 alone, as the tests do when the CRDs are absent.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import sys
import types
import typing
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import yaml

from cluster.paths import REPO_ROOT
from cluster.serve_app import GRPC_HEALTH_SERVICER

CRD_DIR_ENV = "COE_KUBERAY_CRDS"
SOCKET_RESOURCE = "coe_socket"
BUILD_APP = "deployments.app:build_app"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: 0.4 s a CRD instead of 3 s
_MESSAGE_CHARS = 300  # jsonschema repeats whole instances in messages; a pod spec is not a message

PathParts = list[str | int]


@dataclass(frozen=True)
class Problem:
    """One finding: which document, the field path inside it, and what is wrong."""

    where: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.path}: {self.message}"


class ManifestError(ValueError):
    """Every problem found in a call, one per line; `path` is the first offending field."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        self.path = problems[0].path if problems else ""
        super().__init__("\n".join(str(p) for p in problems))


def format_path(parts: typing.Iterable[str | int]) -> str:
    """`spec.workerGroupSpecs[0].rayStartParams["num-gpus"]`: the JSONPath-like form kubectl prints."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out or "<document>"


def _describe(doc: dict) -> str:
    name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
    return f"{doc.get('kind', '<no kind>')} {name or '<no name>'}"


# --------------------------------------------------------------------------- CRD -> JSON Schema


def crd_dir() -> Path:
    """The KubeRay CRDs: `$COE_KUBERAY_CRDS`, else shared/kuberay-crds beside the repo (as in CI)."""
    return Path(os.environ.get(CRD_DIR_ENV) or REPO_ROOT.parent / "shared" / "kuberay-crds")


def crds_available() -> bool:
    """Whether `crd_dir()` holds CRD files; a user's fresh clone has none, CI has shared/ beside it."""
    root = crd_dir()
    return root.is_dir() and any(root.glob("*.yaml"))


@functools.lru_cache(maxsize=4)
def _crd_schemas(directory: str) -> dict[tuple[str, str, str], dict]:
    """(group, version, kind) -> openAPIV3Schema of every served version in the folder's CRDs."""
    root = Path(directory)
    files = sorted(root.glob("*.yaml")) if root.is_dir() else []
    if not files:
        raise ManifestError(
            [
                Problem(
                    str(root),
                    "<crds>",
                    f"no KubeRay CRDs here; set {CRD_DIR_ENV} to the "
                    "folder holding ray.io_rayservices.yaml and friends",
                )
            ]
        )
    schemas = {}
    for file in files:
        crd = yaml.load(file.read_text(), Loader=_YAML_LOADER)
        if not isinstance(crd, dict) or crd.get("kind") != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        for version in spec["versions"]:
            if version.get("served", True):
                key = (spec["group"], version["name"], spec["names"]["kind"])
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


_KEPT_KEYWORDS = {
    "type",
    "required",
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "multipleOf",
    "uniqueItems",
}
_FORMAT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def to_json_schema(node: dict) -> dict:
    """Convert one OpenAPI v3 (structural, Kubernetes-flavoured) schema node to a strict JSON Schema.

    Objects with `properties` get `additionalProperties: false` unless the CRD keeps unknown fields
    (`x-kubernetes-preserve-unknown-fields`) or says otherwise; that is the API server's strict
    field validation. `x-kubernetes-int-or-string` becomes integer-or-string (quantities, ports),
    `nullable` admits null, int32/int64 formats become ranges; CEL rules and defaults are dropped.
    """
    if node.get("x-kubernetes-int-or-string"):
        string = {"type": "string", **({"pattern": node["pattern"]} if "pattern" in node else {})}
        return {"anyOf": [{"type": "integer"}, string], "x-coe-int-or-string": True}
    out: dict[str, Any] = {k: v for k, v in node.items() if k in _KEPT_KEYWORDS}
    if "properties" in node:
        out["properties"] = {name: to_json_schema(sub) for name, sub in node["properties"].items()}
    if "items" in node:
        out["items"] = to_json_schema(node["items"])
    for combinator in ("anyOf", "allOf", "oneOf"):
        if combinator in node:
            out[combinator] = [to_json_schema(sub) for sub in node[combinator]]
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = to_json_schema(extra)
    elif isinstance(extra, bool):
        out["additionalProperties"] = extra
    elif "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if node.get("format") in _FORMAT_RANGES and out.get("type") == "integer":
        low, high = _FORMAT_RANGES[node["format"]]
        out.setdefault("minimum", low)
        out.setdefault("maximum", high)
    return out


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
# Top-level metadata is `type: object` in every CRD (the API server checks ObjectMeta itself):
# check what a manifest may set, and require a DNS-1123 name so `kubectl apply` can address it.
OBJECT_META: dict = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {
            "type": "string",
            "maxLength": 253,
            "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
        },
        "namespace": {"type": "string", "maxLength": 63, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "generateName": {"type": "string"},
    },
}
_KUSTOMIZATION: dict = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "resources": {"type": "array", "items": {"type": "string"}},
        "components": {"type": "array", "items": {"type": "string"}},
        "namespace": {"type": "string"},
        "namePrefix": {"type": "string"},
        "nameSuffix": {"type": "string"},
        "labels": {"type": "array", "items": {"type": "object"}},
        "commonLabels": _STRING_MAP,
        "commonAnnotations": _STRING_MAP,
        "images": {"type": "array", "items": {"type": "object"}},
        "patches": {"type": "array", "items": {"type": "object"}},
        "replicas": {"type": "array", "items": {"type": "object"}},
        "configMapGenerator": {"type": "array", "items": {"type": "object"}},
        "secretGenerator": {"type": "array", "items": {"type": "object"}},
        "generatorOptions": {"type": "object"},
        "replacements": {"type": "array", "items": {"type": "object"}},
        "buildMetadata": {"type": "array", "items": {"type": "string"}},
    },
}


@functools.lru_cache(maxsize=16)
def _validator(directory: str, api_version: str, kind: str) -> jsonschema.Draft7Validator:
    """A compiled validator per kind, built once per process: the CRDs are megabytes of YAML."""
    if (api_version, kind) == ("kustomize.config.k8s.io/v1beta1", "Kustomization"):
        return jsonschema.Draft7Validator(_KUSTOMIZATION)
    crds = _crd_schemas(directory)
    if (api_version, kind) == ("v1", "ConfigMap"):
        schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "data": _STRING_MAP,
                "binaryData": _STRING_MAP,
                "immutable": {"type": "boolean"},
            },
        }
    elif (api_version, kind) == ("v1", "Secret"):
        schema = {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "type": {"type": "string"},
                "data": _STRING_MAP,
                "stringData": _STRING_MAP,
                "immutable": {"type": "boolean"},
            },
        }
    elif (api_version, kind) == ("v1", "PersistentVolumeClaim"):
        # The CRDs embed PersistentVolumeClaimSpec in ephemeral volumes: reuse it, it is the real one.
        pod = crds[("ray.io", "v1", "RayCluster")]["properties"]["spec"]["properties"]["headGroupSpec"]
        volume = pod["properties"]["template"]["properties"]["spec"]["properties"]["volumes"]["items"]
        claim = volume["properties"]["ephemeral"]["properties"]["volumeClaimTemplate"]["properties"]["spec"]
        schema = {
            "type": "object",
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "additionalProperties": False,
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "spec": to_json_schema(claim),
                "status": {"type": "object"},
            },
        }
    else:
        group, _, version = api_version.rpartition("/")
        raw = crds.get((group, version, kind))
        if raw is None:
            known = ", ".join(sorted(f"{g}/{v} {k}" for g, v, k in crds))
            raise ManifestError(
                [
                    Problem(
                        f"{kind}",
                        "apiVersion",
                        f"no served CRD version for {api_version} "
                        f"{kind} in {directory} (known: {known}; plus v1 ConfigMap, "
                        "v1 PersistentVolumeClaim, Kustomization)",
                    )
                ]
            )
        schema = to_json_schema(raw)
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    schema["properties"]["metadata"] = OBJECT_META
    return jsonschema.Draft7Validator(schema)


def _schema_problems(validator: jsonschema.Draft7Validator, doc: dict, where: str) -> list[Problem]:
    """Every schema violation, each pinned to the offending field rather than to its parent."""
    problems = []
    for err in validator.iter_errors(doc):
        path: PathParts = list(err.absolute_path)
        if err.validator == "additionalProperties" and err.validator_value is False:
            known = err.schema.get("properties", {})
            problems += [
                Problem(where, format_path([*path, key]), "unknown field (not in the schema)")
                for key in err.instance
                if key not in known
            ]
        elif err.validator == "required":
            problems += [
                Problem(where, format_path([*path, key]), "required field is missing")
                for key in err.validator_value
                if key not in err.instance
            ]
        elif err.schema.get("x-coe-int-or-string") and isinstance(err.instance, str):
            message = f"{err.instance!r:.80} is not a Kubernetes quantity (e.g. 8, '500m', '64Gi')"
            problems.append(Problem(where, format_path(path), message))
        elif err.schema.get("x-coe-int-or-string"):
            got = f"{type(err.instance).__name__} {err.instance!r:.80}"
            problems.append(Problem(where, format_path(path), f"must be an integer or a string, got {got}"))
        else:
            problems.append(Problem(where, format_path(path), err.message[:_MESSAGE_CHARS]))
    return sorted(set(problems), key=lambda p: (p.path, p.message))


# --------------------------------------------------------------------------- serveConfigV2


def _model_keys(model: type, data: Any, path: PathParts) -> typing.Iterator[tuple[PathParts, str]]:
    """Keys Ray's schema would drop without a word (its models ignore extras): report them."""
    fields = getattr(model, "model_fields", None)
    if not isinstance(data, dict) or fields is None:
        return
    by_key = {**{name: f for name, f in fields.items()}, **{f.alias: f for f in fields.values() if f.alias}}
    for key, value in data.items():
        known = by_key.get(key)
        if known is None:
            yield [*path, key], f"unknown field; Ray Serve would ignore it (known: {sorted(fields)})"
        else:
            yield from _annotation_keys(known.annotation, value, [*path, key])


def _annotation_keys(annotation: Any, value: Any, path: PathParts) -> typing.Iterator[tuple[PathParts, str]]:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        yield from _annotation_keys(args[0], value, path)
    elif isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        yield from _model_keys(annotation, value, path)
    elif origin in (list, tuple, set) and args and isinstance(value, list):
        for index, item in enumerate(value):
            yield from _annotation_keys(args[0], item, [*path, index])
    elif origin is dict and len(args) == 2 and isinstance(value, dict):
        for key, item in value.items():
            yield from _annotation_keys(args[1], item, [*path, key])
    elif origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        free_form = any(a in (dict, typing.Any) or typing.get_origin(a) is dict for a in options)
        models = [a for a in options if isinstance(a, type) and hasattr(a, "model_fields")]
        if isinstance(value, dict) and not free_form and len(models) == 1:
            yield from _model_keys(models[0], value, path)
        elif isinstance(value, list):
            lists = [a for a in options if typing.get_origin(a) in (list, tuple, set)]
            if len(lists) == 1:
                yield from _annotation_keys(lists[0], value, path)


def parse_serve_config(text: Any, where: str, base: PathParts) -> tuple[dict | None, list[Problem]]:
    """Parse a serveConfigV2 string the way KubeRay hands it to Serve, with Ray's own schema."""
    if not isinstance(text, str):
        return None, []  # the CRD schema already reports a non-string
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        return None, [Problem(where, format_path(base), f"not valid YAML: {err}")]
    if not isinstance(data, dict):
        return None, [Problem(where, format_path(base), "must be a YAML mapping (a Serve config)")]
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema  # heavy import: only when a serveConfigV2 is seen

    problems = [
        Problem(where, format_path([*base, *path]), message)
        for path, message in _model_keys(ServeDeploySchema, data, [])
    ]
    try:
        ServeDeploySchema.model_validate(data)
    except ValidationError as err:
        problems += [
            Problem(where, format_path([*base, *e["loc"]]), e["msg"][:_MESSAGE_CHARS]) for e in err.errors()
        ]
    return data, problems


# --------------------------------------------------------------------------- one document


def _document_problems(doc: Any, where: str, *, schema: bool = True) -> list[Problem]:
    if not isinstance(doc, dict):
        return [Problem(where, "<document>", "a manifest must be a YAML mapping")]
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return [
            Problem(
                where,
                "apiVersion" if not isinstance(api_version, str) else "kind",
                "required field is missing or not a string",
            )
        ]
    problems: list[Problem] = []
    if schema:
        try:
            problems = _schema_problems(_validator(str(crd_dir()), api_version, kind), doc, where)
        except ManifestError as err:
            return [Problem(where, p.path, p.message) for p in err.problems]
    spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
    if kind == "RayService" and "serveConfigV2" in spec:
        problems += parse_serve_config(spec["serveConfigV2"], where, ["spec", "serveConfigV2"])[1]
    if kind == "ConfigMap" and isinstance(doc.get("data"), dict):
        for key, text in doc["data"].items():
            if isinstance(text, str) and key.endswith((".yaml", ".yml")):
                try:
                    yaml.safe_load(text)
                except yaml.YAMLError as err:
                    problems.append(Problem(where, format_path(["data", key]), f"not valid YAML: {err}"))
    return problems


def validate_manifest(doc: dict, *, schema: bool = True) -> None:
    """Check one document on its own: CRD schema (strict), serveConfigV2, YAML in ConfigMap data.

    Raises ManifestError naming every offending field path. `schema=False` skips the CRD schema.
    """
    where = _describe(doc) if isinstance(doc, dict) else "<document>"
    problems = _document_problems(doc, where, schema=schema)
    if problems:
        raise ManifestError(problems)


# --------------------------------------------------------------------------- across documents


_QUANTITY = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)([KMGTPE]i|[numkMGTPE]?)")
_QUANTITY_SUFFIXES = {
    **{unit: Decimal(2) ** (10 * n) for n, unit in enumerate(["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])},
    **{unit: Decimal(10) ** (3 * n) for n, unit in enumerate(["", "k", "M", "G", "T", "P", "E"])},
    "m": Decimal("1e-3"),
    "u": Decimal("1e-6"),
    "n": Decimal("1e-9"),
}


def parse_quantity(value: Any) -> Decimal:
    """A Kubernetes quantity ("1Ti", "64", "500m", 8, "1e3") as a number of base units."""
    match = _QUANTITY.fullmatch(str(value).strip())
    if isinstance(value, bool) or not match:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    try:
        return Decimal(match.group(1)) * _QUANTITY_SUFFIXES[match.group(2)]
    except InvalidOperation as err:
        raise ValueError(f"not a Kubernetes quantity: {value!r}") from err


def ray_resources(group: dict) -> dict[str, Decimal]:
    """Custom Ray resources a group advertises, read the way KubeRay hands them to `ray start`.

    The structured `resources` field (KubeRay >= 1.5) wins. Otherwise rayStartParams.resources is
    pasted verbatim into a shell command as `--resources=<value>`, so it must be JSON wrapped in one
    pair of double quotes with the inner quotes escaped: '"{\\"coe_socket\\": 8}"' in YAML. Anything
    else breaks `ray start` inside the pod; raise ValueError here instead.
    """
    structured = group.get("resources")
    if isinstance(structured, dict) and structured:
        return {key: parse_quantity(value) for key, value in structured.items()}
    raw = (group.get("rayStartParams") or {}).get("resources")
    if raw is None:
        return {}
    text = str(raw)
    body = text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else None
    if body is None or re.search(r'(?<!\\)"', body):
        raise ValueError(
            "must be JSON wrapped in double quotes with the inner quotes escaped, e.g. "
            '\'"{\\"coe_socket\\": 8}"\' (KubeRay pastes it into `ray start --resources=`)'
        )
    try:
        parsed = json.loads(body.replace('\\"', '"').replace("\\\\", "\\"))  # what bash makes of it
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON once unquoted: {err}") from err
    if not isinstance(parsed, dict) or not all(isinstance(v, int | float) for v in parsed.values()):
        raise ValueError("must map resource names to numbers")
    return {key: Decimal(str(value)) for key, value in parsed.items()}


# Volumes that die with the pod or carry no data of their own: never a STORE.
_EPHEMERAL_VOLUMES = {"emptyDir", "configMap", "secret", "downwardAPI", "projected", "ephemeral"}


@dataclass
class _Group:
    """One head or worker group: where it sits in its document, its pod and its Ray container."""

    path: PathParts
    spec: dict

    @property
    def is_head(self) -> bool:
        return self.path[-1] == "headGroupSpec"

    @property
    def pod(self) -> dict:
        return (self.spec.get("template") or {}).get("spec") or {}

    @property
    def container(self) -> dict:
        """KubeRay runs Ray in the first container of the template."""
        return (self.pod.get("containers") or [{}])[0]

    def at(self, *parts: str | int) -> PathParts:
        return [*self.path, *parts]

    def in_container(self, *parts: str | int) -> PathParts:
        return self.at("template", "spec", "containers", 0, *parts)

    def mount_for(self, file: str) -> tuple[str, dict] | None:
        """(path of `file` inside its volume, that volume) for the deepest mount holding it, or None."""
        volumes = {v.get("name"): v for v in self.pod.get("volumes") or []}
        target = PurePosixPath(file)
        mounts = self.container.get("volumeMounts") or []
        for mount in sorted(mounts, key=lambda m: -len(str(m.get("mountPath", "")))):
            root = PurePosixPath(str(mount.get("mountPath", "/nonexistent")))
            if target == root or root in target.parents:
                return str(target.relative_to(root)), volumes.get(mount.get("name"), {})
        return None


@dataclass
class _ClusterUse:
    """A Ray cluster spec in some document, and the cluster configs that run on it."""

    where: str
    base: PathParts
    spec: dict
    configs: list[tuple[str, PathParts]]  # (file inside the pods, where the manifest names it)
    serve: dict | None = None  # the parsed serveConfigV2 on the RayService route
    problems: list[Problem] = field(default_factory=list)

    @property
    def groups(self) -> list[_Group]:
        workers = self.spec.get("workerGroupSpecs") or []
        return [_Group([*self.base, "headGroupSpec"], self.spec.get("headGroupSpec") or {})] + [
            _Group([*self.base, "workerGroupSpecs", i], group) for i, group in enumerate(workers)
        ]

    def report(self, path: PathParts, message: str) -> None:
        self.problems.append(Problem(self.where, format_path(path), message))


def _cluster_uses(docs: list[tuple[str, dict]], problems: list[Problem]) -> list[_ClusterUse]:
    """Every Ray cluster spec among the documents, with the configs its app or its RayJobs name."""
    uses: list[_ClusterUse] = []
    by_name: dict[str, _ClusterUse] = {}
    for where, doc in docs:
        kind, spec = doc.get("kind"), doc.get("spec") or {}
        if kind == "RayService":
            serve, _ = parse_serve_config(spec.get("serveConfigV2"), where, ["spec", "serveConfigV2"])
            configs = [
                (app["args"]["config"], ["spec", "serveConfigV2", "applications", i, "args", "config"])
                for i, app in enumerate((serve or {}).get("applications") or [])
                if isinstance((app.get("args") or {}).get("config"), str)
            ]
            uses.append(
                _ClusterUse(
                    where, ["spec", "rayClusterConfig"], spec.get("rayClusterConfig") or {}, configs, serve
                )
            )
        elif kind == "RayCluster":
            use = _ClusterUse(where, ["spec"], spec, [])
            by_name[(doc.get("metadata") or {}).get("name", "")] = use
            uses.append(use)
    for where, doc in docs:
        spec = doc.get("spec") or {}
        if doc.get("kind") != "RayJob":
            continue
        argv = shlex.split(spec.get("entrypoint") or "")
        refs = [(argv[argv.index("--config") + 1], ["spec", "entrypoint"])] if "--config" in argv[:-1] else []
        if spec.get("rayClusterSpec"):
            uses.append(_ClusterUse(where, ["spec", "rayClusterSpec"], spec["rayClusterSpec"], refs))
        elif (name := (spec.get("clusterSelector") or {}).get("ray.io/cluster")) in by_name:
            by_name[name].configs += refs
        else:
            problems.append(
                Problem(
                    where,
                    'spec.clusterSelector["ray.io/cluster"]',
                    f"no RayCluster named {name!r} among these manifests",
                )
            )
    return uses


def _check_policy(use: _ClusterUse) -> None:
    """Security defaults (RAY-NOTES): token auth on, nothing but Serve published, one Ray version."""
    head = use.spec.get("headGroupSpec") or {}
    if (use.spec.get("authOptions") or {}).get("mode") != "token":
        use.report(
            [*use.base, "authOptions", "mode"],
            "must be 'token': the dashboard and Jobs API run code for whoever reaches them",
        )
    if head.get("serviceType", "ClusterIP") != "ClusterIP" or head.get("enableIngress"):
        use.report(
            [*use.base, "headGroupSpec", "serviceType"],
            "the head Service carries the dashboard and GCS: keep it ClusterIP without ingress, "
            "and publish Serve through the serve Service",
        )
    installed = metadata.version("ray")
    if str(use.spec.get("rayVersion", "")).split(".")[:2] != installed.split(".")[:2]:
        use.report(
            [*use.base, "rayVersion"],
            f"must match the project's Ray ({installed}), got {use.spec.get('rayVersion')!r}",
        )


def _config_sources(use: _ClusterUse, file: str, named_at: PathParts) -> set[tuple[str, str]]:
    """(ConfigMap, key) pairs that provide `file` in the pods; every group must mount it."""
    sources = set()
    for group in use.groups:
        found = group.mount_for(file)
        projected = (found[1].get("configMap") or {}) if found else {}
        items = {item.get("path"): item.get("key") for item in projected.get("items") or []}
        key = (items.get(found[0]) if items else found[0]) if found else None
        if not projected or key is None:
            use.report(
                group.in_container("volumeMounts"),
                f"no ConfigMap volume provides {file} (named at "
                f"{format_path(named_at)}); Serve may build the app on any pod",
            )
        else:
            sources.add((projected.get("name", ""), key))
    return sources


def _load_config(name: str, key: str, configmaps: dict[str, tuple[str, dict]]) -> tuple[Any, list[Problem]]:
    """The ClusterConfig a ConfigMap carries, validated without the checkpoints (they live on the PVC)."""
    from pydantic import ValidationError

    from cluster.config import config_from_dict

    if name not in configmaps:
        return None, [
            Problem(
                f"ConfigMap {name}",
                "<document>",
                "mounted by a Ray pod but not among these manifests (check the whole folder)",
            )
        ]
    where, doc = configmaps[name]
    text = (doc.get("data") or {}).get(key)
    if not isinstance(text, str):
        return None, [Problem(where, format_path(["data", key]), "missing; a Ray pod reads it as its config")]
    try:
        return config_from_dict(yaml.safe_load(text), check_store=False), []
    except ValidationError as err:
        return None, [
            Problem(where, format_path(["data", key, *e["loc"]]), e["msg"][:_MESSAGE_CHARS])
            for e in err.errors()
        ]
    except (yaml.YAMLError, ValueError, TypeError) as err:
        return None, [Problem(where, format_path(["data", key]), str(err)[:_MESSAGE_CHARS])]


def _check_fit(use: _ClusterUse, config: Any, source: str) -> None:
    """The pods must be the machine the cluster config describes: sockets, GPUs, nodes, STORE."""
    topo, nodes = config.topology, 0
    for group in use.groups:
        mount = group.mount_for(config.store_root) if config.store_root else None
        if mount is None or set(mount[1]) & _EPHEMERAL_VOLUMES:
            use.report(
                group.in_container("volumeMounts"),
                f"store_root {config.store_root} must be on a persistent volume mounted in every pod: "
                f"whichever node pages an expert in reads it ({source})",
            )
        try:
            sockets = ray_resources(group.spec).get(SOCKET_RESOURCE, Decimal(0))
        except ValueError as err:
            use.report(group.at("rayStartParams", "resources"), str(err))
            continue
        if not sockets:
            continue
        nodes += 1 if group.is_head else int(group.spec.get("replicas", group.spec.get("minReplicas")) or 0)
        if sockets != topo.sockets_per_node:
            use.report(
                group.at("rayStartParams", "resources"),
                f"{SOCKET_RESOURCE} is {sockets} but "
                f"topology.sockets_per_node is {topo.sockets_per_node} ({source})",
            )
        if topo.device == "cuda":
            _check_gpus(use, group, topo.sockets_per_node, source)
        _check_memory(use, group, topo.ddr_per_node, source)
    if nodes != topo.nodes:
        use.report(
            [*use.base, "workerGroupSpecs"],
            f"{nodes} pods advertise {SOCKET_RESOURCE} but topology.nodes is {topo.nodes} ({source})",
        )
    _check_ports(use, config, source)
    _check_probes_and_scrape(use, config, source)


_SCRAPE = "prometheus.io/scrape"


def _check_probes_and_scrape(use: _ClusterUse, config: Any, source: str) -> None:
    """gRPC readiness probes (grpc.health.v1, deployments/grpc_health.py) only where they cannot
    deadlock, and the /metrics scrape on one pod.

    A RayService's workers need one on serve.grpc_port: they join the serve Service only once the
    app can serve. Never on the head (KubeRay deploys the app once the head pod is Ready), nor on a
    RayJob's cluster (the RayJob waits for every pod to be Ready before it runs the deploy). The
    probes need the health servicer in serveConfigV2, or they get UNIMPLEMENTED forever.
    Every proxy answers /metrics with the same cluster-wide numbers: annotate the head pod only.
    """
    grpc_port = config.serve.grpc_port
    probed = False
    for group in use.groups:
        probe = (group.container.get("readinessProbe") or {}).get("grpc")
        path = group.in_container("readinessProbe")
        if use.serve is not None and not group.is_head:
            probed = True
            if not probe or probe.get("port") != grpc_port:
                use.report(
                    path,
                    f"needs a gRPC readiness probe on serve.grpc_port {grpc_port}: a worker should join "
                    f"the serve Service only once grpc.health.v1 says SERVING ({source})",
                )
        elif probe:
            why = (
                "KubeRay deploys the app only once the head pod is Ready"
                if group.is_head
                else "a RayJob waits for every pod of its cluster to be Ready before it deploys the app"
            )
            use.report(path, f"must not gate readiness on the app with a gRPC probe: {why}")
        annotations = ((group.spec.get("template") or {}).get("metadata") or {}).get("annotations") or {}
        if annotations.get(_SCRAPE) == "true":
            where = group.at("template", "metadata", "annotations")
            if not group.is_head:
                use.report(
                    where,
                    "scrape the head pod only: every proxy answers /metrics for the whole cluster, "
                    "so a scrape per pod counts everything once per pod",
                )
            elif (
                annotations.get("prometheus.io/port"),
                annotations.get("prometheus.io/path", "/metrics"),
            ) != (
                str(config.serve.http_port),
                "/metrics",
            ):
                use.report(
                    where,
                    f"prometheus.io/port must be serve.http_port {config.serve.http_port}, path /metrics",
                )
    servicers = ((use.serve or {}).get("grpc_options") or {}).get("grpc_servicer_functions") or []
    if probed and GRPC_HEALTH_SERVICER not in servicers:
        use.report(
            ["spec", "serveConfigV2", "grpc_options", "grpc_servicer_functions"],
            f"needs {GRPC_HEALTH_SERVICER}: without it the readiness probes get UNIMPLEMENTED and no "
            "worker ever becomes Ready",
        )


def _check_gpus(use: _ClusterUse, group: _Group, sockets: int, source: str) -> None:
    """One socket per GPU: the pod's GPU limit and Ray's num-gpus both equal sockets_per_node."""
    limits = (group.container.get("resources") or {}).get("limits") or {}
    gpus = next((parse_quantity(v) for k, v in limits.items() if k.endswith("/gpu")), Decimal(0))
    if gpus != sockets:
        use.report(
            group.in_container("resources", "limits", "nvidia.com/gpu"),
            f"{gpus} GPUs per pod, but sockets_per_node is {sockets} on a cuda topology ({source})",
        )
    num_gpus = (group.spec.get("rayStartParams") or {}).get("num-gpus")
    if num_gpus is not None and parse_quantity(num_gpus) != sockets:
        use.report(group.at("rayStartParams", "num-gpus"), f"must be {sockets}, sockets_per_node ({source})")


def _check_memory(use: _ClusterUse, group: _Group, ddr_bytes: int, source: str) -> None:
    """DDR is the node's object store: it must hold ddr_per_node, in RAM (/dev/shm), inside the pod limit."""
    params = group.spec.get("rayStartParams") or {}
    if "object-store-memory" not in params:
        use.report(
            group.at("rayStartParams", "object-store-memory"),
            f"must be set: ddr_per_node ({ddr_bytes} bytes) plus headroom ({source})",
        )
        return
    store = parse_quantity(params["object-store-memory"])
    if store < ddr_bytes:
        use.report(
            group.at("rayStartParams", "object-store-memory"),
            f"{store} bytes is below ddr_per_node, {ddr_bytes} ({source})",
        )
    shm = group.mount_for("/dev/shm")
    empty_dir = (shm[1].get("emptyDir") or {}) if shm and shm[0] == "." else {}
    if empty_dir.get("medium") != "Memory" or "sizeLimit" not in empty_dir:
        use.report(
            group.at("template", "spec", "volumes"),
            "mount an emptyDir {medium: Memory, sizeLimit} "
            "at /dev/shm, or the object store (the DDR tier) falls back to disk",
        )
    elif parse_quantity(empty_dir["sizeLimit"]) < store:
        use.report(
            group.at("template", "spec", "volumes"),
            f"/dev/shm sizeLimit {empty_dir['sizeLimit']} is below object-store-memory, {store} bytes",
        )
    memory = ((group.container.get("resources") or {}).get("limits") or {}).get("memory")
    if memory is None or parse_quantity(memory) <= store:
        use.report(
            group.in_container("resources", "limits", "memory"),
            f"must exceed object-store-memory ({store} bytes): /dev/shm counts against it",
        )


def _check_ports(use: _ClusterUse, config: Any, source: str) -> None:
    """The head publishes the Serve ports the config and serveConfigV2 agree on, on all interfaces."""
    serve = config.serve
    head = _Group([*use.base, "headGroupSpec"], use.spec.get("headGroupSpec") or {})
    ports = {p.get("containerPort"): p.get("name") for p in head.container.get("ports") or []}
    if ports.get(serve.http_port) != "serve":
        use.report(
            head.in_container("ports"),
            f"needs containerPort {serve.http_port} named 'serve' "
            f"(serve.http_port; KubeRay's serve Service targets that name) ({source})",
        )
    if serve.grpc_port not in ports:
        use.report(
            head.in_container("ports"), f"needs containerPort {serve.grpc_port}: serve.grpc_port ({source})"
        )
    if serve.http_host != "0.0.0.0":
        use.report(
            head.in_container("ports"),
            f"serve.http_host must be 0.0.0.0 in a pod, or no Service reaches the proxies ({source})",
        )
    if use.serve is None:
        return
    base = ["spec", "serveConfigV2"]
    expected = {
        ("http_options", "host"): "0.0.0.0",
        ("http_options", "port"): serve.http_port,
        ("grpc_options", "port"): serve.grpc_port,
    }
    for (section, key), want in expected.items():
        if (got := (use.serve.get(section) or {}).get(key)) != want:
            use.report([*base, section, key], f"is {got!r}, the cluster config says {want!r} ({source})")
    if not (use.serve.get("grpc_options") or {}).get("grpc_servicer_functions"):
        use.report([*base, "grpc_options", "grpc_servicer_functions"], "empty: gRPC would serve nothing")
    for i, app in enumerate(use.serve.get("applications") or []):
        if (app.get("name"), app.get("route_prefix", "/")) != (serve.app_name, serve.route_prefix):
            use.report(
                [*base, "applications", i],
                f"name and route_prefix must be {serve.app_name!r} and "
                f"{serve.route_prefix!r}, as in the cluster config ({source})",
            )


def _cross_problems(docs: list[tuple[str, dict]]) -> list[Problem]:
    """Checks no single document can answer: config references, and pods against the config."""
    problems: list[Problem] = []
    configmaps = {
        (doc.get("metadata") or {}).get("name"): (where, doc)
        for where, doc in docs
        if doc.get("kind") == "ConfigMap"
    }
    secrets = {
        (doc.get("metadata") or {}).get("name"): (where, doc)
        for where, doc in docs
        if doc.get("kind") == "Secret"
    }
    for use in _cluster_uses(docs, problems):
        _check_policy(use)
        for file, named_at in use.configs:
            for name, key in sorted(_config_sources(use, file, named_at)):
                config, config_problems = _load_config(name, key, configmaps)
                problems += config_problems
                if config is not None:
                    _check_fit(use, config, f"ConfigMap {name} {key}")
                    problems += _check_api_keys(use, config, secrets, (name, key, configmaps))
        problems += use.problems
    problems += _committed_secret_problems(secrets)
    return problems


def _check_api_keys(
    use: _ClusterUse, config: Any, secrets: dict[str, tuple[str, dict]], source: tuple[str, str, dict]
) -> list[Problem]:
    """A cluster runs with API keys on, and every Ray pod gets the key from a Secret.

    Every pod, because Serve may place the ingress replica on any of them. The key arrives as the
    variable `security.api_key_env` (env valueFrom.secretKeyRef) or as `security.api_keys_file`
    on a Secret volume; a literal value would put the key in git and in `kubectl get -o yaml`.
    """
    security, problems = config.security, []
    name, key, configmaps = source
    if not security.require_api_key:
        where = configmaps[name][0] if name in configmaps else f"ConfigMap {name}"
        problems.append(
            Problem(
                where,
                format_path(["data", key, "security", "require_api_key"]),
                "must be true on a cluster: anyone who reaches the Serve ports could use every expert, "
                "and a missing Secret would go unnoticed",
            )
        )
    for group in use.groups:
        env = group.container.get("env") or []
        found = [(i, e) for i, e in enumerate(env) if e.get("name") == security.api_key_env]
        mounted = security.api_keys_file and group.mount_for(security.api_keys_file)
        if mounted and "secret" in mounted[1]:
            continue
        if not found:
            use.report(
                group.in_container("env"),
                f"must set {security.api_key_env} from a Secret (valueFrom.secretKeyRef): Serve may run "
                f"the ingress on this pod, and without a key it refuses to start",
            )
            continue
        index, entry = found[0]
        ref = (entry.get("valueFrom") or {}).get("secretKeyRef") or {}
        if "value" in entry or not ref:
            use.report(
                group.in_container("env", index),
                "the API key must come from a Secret (valueFrom.secretKeyRef), never a literal value",
            )
        elif secrets and ref.get("name") not in secrets:
            use.report(
                group.in_container("env", index, "valueFrom", "secretKeyRef", "name"),
                f"no Secret named {ref.get('name')!r} among these manifests (known: {sorted(secrets)})",
            )
        elif secrets:
            doc = secrets[ref["name"]][1]
            keys = {*(doc.get("data") or {}), *(doc.get("stringData") or {})}
            if ref.get("key") not in keys:
                use.report(
                    group.in_container("env", index, "valueFrom", "secretKeyRef", "key"),
                    f"Secret {ref['name']!r} has no key {ref.get('key')!r} (it has {sorted(keys)})",
                )
    return problems


def _committed_secret_problems(secrets: dict[str, tuple[str, dict]]) -> list[Problem]:
    """A Secret in the repository is a template: a real key committed there is a leaked key."""
    return [
        Problem(
            where,
            format_path([section, name]),
            "holds a value: never commit a key; create the "
            "Secret with kubectl (k8s/README.md) and leave this template empty",
        )
        for where, doc in secrets.values()
        for section in ("data", "stringData")
        for name, value in (doc.get(section) or {}).items()
        if value
    ]


# --------------------------------------------------------------------------- files and CLI


def _load_docs(paths: list[Path]) -> tuple[list[tuple[str, dict]], list[Problem]]:
    docs, problems = [], []
    files = [f for p in paths for f in (sorted([*p.glob("*.yaml"), *p.glob("*.yml")]) if p.is_dir() else [p])]
    for file in files:
        try:
            loaded = [d for d in yaml.safe_load_all(file.read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as err:
            problems.append(Problem(str(file), "<file>", str(err)[:_MESSAGE_CHARS]))
            continue
        for doc in loaded:
            where = f"{file}: {_describe(doc)}" if isinstance(doc, dict) else str(file)
            docs.append((where, doc))
            if isinstance(doc, dict) and doc.get("kind") == "Kustomization":
                problems += [
                    Problem(where, format_path(["resources", i]), f"{entry} does not exist")
                    for i, entry in enumerate(doc.get("resources") or [])
                    if isinstance(entry, str) and "://" not in entry and not (file.parent / entry).exists()
                ]
    return docs, problems


def validate_paths(paths: list[str | Path], *, cross_check: bool = True, schema: bool = True) -> list[str]:
    """Validate every manifest in these files and folders; returns their kinds, in order.

    With `cross_check`, also the checks between documents (cluster config vs pods, security).
    `schema=False` skips the KubeRay CRD schemas (for a checkout without them); the rest still runs.
    """
    docs, problems = _load_docs([Path(p) for p in paths])
    for where, doc in docs:
        problems += _document_problems(doc, where, schema=schema)
    if cross_check and not problems:
        problems += _cross_problems(docs)
    if problems:
        raise ManifestError(problems)
    return [doc["kind"] for _, doc in docs]


def validate_file(path: str | Path, *, schema: bool = True) -> list[str]:
    """Validate the documents of one file on their own (references to other files are not followed)."""
    return validate_paths([path], cross_check=False, schema=schema)


def validate_dir(path: str | Path = REPO_ROOT / "k8s", *, schema: bool = True) -> list[str]:
    """Validate a whole manifest folder, including the checks across its documents."""
    return validate_paths([path], schema=schema)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.manifests", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "paths",
        nargs="*",
        default=[str(REPO_ROOT / "k8s")],
        help="manifest files or folders, checked together (default: k8s/)",
    )
    parser.add_argument(
        "--no-crds",
        action="store_true",
        help=f"skip the KubeRay CRD schemas (when neither ${CRD_DIR_ENV} nor shared/kuberay-crds exists); "
        "the Serve schema and the cross-checks still run",
    )
    args = parser.parse_args(argv)
    try:
        kinds = validate_paths(args.paths, schema=not args.no_crds)
    except ManifestError as err:
        print(f"{len(err.problems)} problem(s):\n{err}", file=sys.stderr)
        return 1
    against = "without the CRD schemas (--no-crds)" if args.no_crds else f"against the CRDs in {crd_dir()}"
    print(f"ok: {len(kinds)} manifests ({', '.join(kinds)}) {against}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
