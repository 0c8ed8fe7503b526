"""The k8s/ manifests, checked offline against the KubeRay CRDs, Ray's Serve schema and the cluster
config they serve. Each negative case breaks one real manifest and expects the validator to name
the field, as `kubectl apply` or `ray start` would have, only later and on a GPU cluster.

The CRD schema checks need the KubeRay CRDs ($COE_KUBERAY_CRDS, or shared/kuberay-crds beside the
repository, as CI has them); without them those tests are skipped with a reason naming the variable.
Every other check (Serve schema, the cluster config against the pods, security) runs always.
"""

from __future__ import annotations

import copy
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from cluster.config import load_config
from cluster.manifests import (
    BUILD_APP,
    CRD_DIR_ENV,
    SOCKET_RESOURCE,
    ManifestError,
    crd_dir,
    crds_available,
    parse_quantity,
    ray_resources,
    validate_dir,
    validate_file,
    validate_manifest,
    validate_paths,
)
from cluster.paths import REPO_ROOT

K8S = REPO_ROOT / "k8s"
CONFIG_FILE = REPO_ROOT / "cluster" / "configs" / "k8s-gpu.yaml"
CONFIG_IN_PODS = "/etc/coe/cluster.yaml"
HAVE_CRDS = crds_available()
needs_crds = pytest.mark.skipif(
    not HAVE_CRDS,
    reason=f"KubeRay CRDs not found at {crd_dir()}: set {CRD_DIR_ENV} to the folder holding "
    "ray.io_rayservices.yaml (CI has them in shared/kuberay-crds beside the repository)",
)


def _load(name: str) -> dict:
    (doc,) = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None]
    return doc


@pytest.fixture(scope="module")
def rayservice() -> dict:
    return _load("rayservice.yaml")


@pytest.fixture(scope="module")
def serve_config(rayservice: dict) -> dict:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


@pytest.fixture(scope="module")
def config():
    return load_config(CONFIG_FILE, check_store=False)


def _worker(spec: dict) -> dict:
    (group,) = spec["workerGroupSpecs"]
    return group


# --------------------------------------------------------------------------- the real manifests


KINDS = [
    "ConfigMap", "Kustomization", "PersistentVolumeClaim", "RayCluster", "RayJob", "RayService", "Secret",
]


@needs_crds
def test_every_manifest_in_k8s_validates_against_the_crds_and_each_other():
    assert sorted(validate_dir(K8S)) == KINDS


def test_without_the_crds_every_other_check_still_runs(monkeypatch, tmp_path: Path):
    monkeypatch.setenv(CRD_DIR_ENV, str(tmp_path))  # an empty folder: no CRDs anywhere
    assert sorted(validate_dir(K8S, schema=False)) == KINDS
    broken = _broken_folder(tmp_path, "configmap.yaml", _configmap_topology("nodes", 3))
    with pytest.raises(ManifestError, match="topology.nodes is 3"):
        validate_dir(broken, schema=False)


@needs_crds
@pytest.mark.parametrize("name", sorted(p.name for p in K8S.glob("*.yaml")))
def test_each_file_validates_on_its_own(name: str):
    assert validate_file(K8S / name)


def test_serve_config_v2_parses_with_rays_schema_and_builds_the_coe_app(serve_config: dict):
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(serve_config)
    (app,) = schema.applications
    assert (app.name, app.import_path, app.route_prefix) == ("coe", BUILD_APP, "/")
    assert app.args == {"config": CONFIG_IN_PODS}
    assert (schema.http_options.host, schema.http_options.port) == ("0.0.0.0", 8000)
    assert schema.grpc_options.port == 9000
    servicers = [
        "deployments.coe_pb2_grpc.add_CoEServicer_to_server",
        "grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server",  # the workers' gRPC probes
    ]
    assert schema.grpc_options.grpc_servicer_functions == servicers


def test_configmap_is_a_verbatim_copy_of_the_k8s_gpu_config():
    configmap = _load("configmap.yaml")
    assert configmap["data"]["cluster.yaml"] == CONFIG_FILE.read_text(), (
        "k8s/configmap.yaml drifted from cluster/configs/k8s-gpu.yaml: regenerate it (k8s/README.md)"
    )


def test_k8s_gpu_config_loads_without_checkpoints(config):
    assert (config.topology.nodes, config.topology.sockets_per_node, config.topology.device) == (2, 8, "cuda")
    assert config.store_root == "/models/zoo"
    assert config.topology.hbm_per_socket < 80 * 2**30  # an H100 80GB, with room for the CUDA context
    assert config.topology.kv_cache_per_socket >= 8 * 2**30  # a GPU socket batches long contexts
    assert len(config.experts) == 16


def test_worker_pods_are_the_machine_the_topology_describes(rayservice: dict, config):
    topo = config.topology
    worker = _worker(rayservice["spec"]["rayClusterConfig"])
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert ray_resources(worker)[SOCKET_RESOURCE] == topo.sockets_per_node
    assert parse_quantity(limits["nvidia.com/gpu"]) == topo.sockets_per_node
    assert int(worker["rayStartParams"]["num-gpus"]) == topo.sockets_per_node
    assert worker["replicas"] == worker["minReplicas"] == worker["maxReplicas"] == topo.nodes
    store = int(worker["rayStartParams"]["object-store-memory"])
    assert topo.ddr_per_node <= store < parse_quantity(limits["memory"])
    head = rayservice["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert SOCKET_RESOURCE not in ray_resources(head)


def test_coe_socket_quoting_is_what_rays_autoscaler_parses(rayservice: dict):
    # Ray's private parser, the one its KubeRay autoscaler runs: skip, don't fail, if a release renames it.
    autoscaling_config = pytest.importorskip("ray.autoscaler._private.kuberay.autoscaling_config")
    parse = getattr(autoscaling_config, "_get_custom_resources", None) or pytest.skip("parser renamed")
    worker = _worker(rayservice["spec"]["rayClusterConfig"])
    parsed = parse({}, worker["rayStartParams"], worker["groupName"])
    assert parsed == {SOCKET_RESOURCE: 8} == {k: int(v) for k, v in ray_resources(worker).items()}


def test_both_routes_run_the_same_cluster_but_only_the_rayservice_gates_readiness_on_the_app(rayservice):
    service_spec = copy.deepcopy(rayservice["spec"]["rayClusterConfig"])
    probe = _worker(service_spec)["template"]["spec"]["containers"][0].pop("readinessProbe")
    assert probe["grpc"] == {"port": 9000}  # grpc.health.v1: SERVING once every socket registered
    assert _load("raycluster.yaml")["spec"] == service_spec


def test_metrics_are_scraped_from_the_head_pod_only(rayservice: dict):
    cluster = rayservice["spec"]["rayClusterConfig"]
    annotations = cluster["headGroupSpec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/port"], annotations["prometheus.io/path"]) == ("8000", "/metrics")
    assert "annotations" not in _worker(cluster)["template"]["metadata"]
    (monitor,) = yaml.safe_load_all((K8S / "monitoring" / "podmonitor.yaml").read_text())
    head_labels = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= head_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    head_ports = {p["name"] for p in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"]}
    assert endpoint["port"] in head_ports and endpoint["path"] == "/metrics"


def test_rayjob_runs_cluster_deploy_against_the_raycluster():
    job, cluster = _load("rayjob.yaml"), _load("raycluster.yaml")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert "rayClusterSpec" not in job["spec"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv == ["python", "-m", "cluster.deploy", "--config", CONFIG_IN_PODS]


def test_token_auth_is_on_and_only_serve_ports_are_published(rayservice: dict):
    spec = rayservice["spec"]["rayClusterConfig"]
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and not head.get("enableIngress")
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert (ports["serve"], ports["grpc"]) == (8000, 9000)
    assert 10001 not in ports.values()  # Ray Client: runs code for whoever reaches it
    assert "serveService" not in rayservice["spec"]  # KubeRay's default: ClusterIP, port 8000 only


def test_kustomization_applies_one_route_only():
    kustomization = _load("kustomization.yaml")
    # secret.yaml is a template: `kubectl apply -k` must never overwrite the real key with it
    assert set(kustomization["resources"]) == {"configmap.yaml", "pvc.yaml", "rayservice.yaml"}


def _ray_containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [group["template"]["spec"]["containers"][0] for group in groups]


def test_every_ray_pod_takes_the_api_key_from_the_secret_and_the_config_requires_one(rayservice, config):
    secret = _load("secret.yaml")
    assert config.security.require_api_key
    for spec in (rayservice["spec"]["rayClusterConfig"], _load("raycluster.yaml")["spec"]):
        for container in _ray_containers(spec):
            (entry,) = [e for e in container["env"] if e["name"] == config.security.api_key_env]
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref == {"name": secret["metadata"]["name"], "key": "COE_API_KEY"} and "value" not in entry
    assert secret["stringData"] == {"COE_API_KEY": ""}  # the committed template holds no key


# --------------------------------------------------------------------------- one broken document


def _broken(doc: dict, change: Callable[[dict], None]) -> dict:
    doc = copy.deepcopy(doc)
    change(doc)
    return doc


def _set_serve(old: str, new: str) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        assert old in doc["spec"]["serveConfigV2"]
        doc["spec"]["serveConfigV2"] = doc["spec"]["serveConfigV2"].replace(old, new)

    return change


def _worker_of(doc: dict) -> dict:
    return _worker(doc["spec"]["rayClusterConfig"])


def _container_of(doc: dict) -> dict:
    return _worker_of(doc)["template"]["spec"]["containers"][0]


BROKEN_DOCUMENTS = {
    "wrong type": (lambda d: _worker_of(d).update(replicas="two"),
                   "spec.rayClusterConfig.workerGroupSpecs[0].replicas", "is not of type 'integer'"),
    "unknown field": (lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"].update(foo=1),
                      "spec.rayClusterConfig.headGroupSpec.foo", "unknown field"),
    "unknown field in the pod template": (
        lambda d: _container_of(d).update(imagePullPolicyy="Always"),
        "workerGroupSpecs[0].template.spec.containers[0].imagePullPolicyy", "unknown field"),
    "rayStartParams are strings": (lambda d: _worker_of(d)["rayStartParams"].update({"num-gpus": 8}),
                                   'rayStartParams["num-gpus"]', "is not of type 'string'"),
    "int-or-string is neither": (
        lambda d: _container_of(d)["resources"]["limits"].update(cpu=True),
        "containers[0].resources.limits.cpu", "must be an integer or a string"),
    "int32 overflow": (lambda d: _worker_of(d).update(maxReplicas=2**40),
                       "spec.rayClusterConfig.workerGroupSpecs[0].maxReplicas", "greater than the maximum"),
    "missing required field": (lambda d: _worker_of(d).pop("groupName"),
                               "spec.rayClusterConfig.workerGroupSpecs[0].groupName", "required"),
    "label values are strings": (lambda d: d["metadata"]["labels"].update(tier=1),
                                 "metadata.labels.tier", "is not of type 'string'"),
    "serveConfigV2 wrong type": (_set_serve("port: 8000", "port: eight-thousand"),
                                 "spec.serveConfigV2.http_options.port", "valid integer"),
    "serveConfigV2 unknown field": (_set_serve("grpc_options:", "grpc_option:"),
                                    "spec.serveConfigV2.grpc_option", "Ray Serve would ignore it"),
    "serveConfigV2 unknown deployment option": (
        _set_serve("    args:", "    deployments: [{name: CoERouter, num_replica: 2}]\n    args:"),
        "spec.serveConfigV2.applications[0].deployments[0].num_replica", "Ray Serve would ignore it"),
    "unknown apiVersion": (lambda d: d.update(apiVersion="ray.io/v2"), "apiVersion", "no served CRD version"),
}


def _case(name: str) -> object:
    """serveConfigV2 is checked with Ray's schema, the rest of a document with the CRDs."""
    return name if name.startswith("serveConfigV2") else pytest.param(name, marks=needs_crds)


@pytest.mark.parametrize("case", [_case(name) for name in sorted(BROKEN_DOCUMENTS)])
def test_a_broken_rayservice_is_rejected_naming_the_field(case: str, rayservice: dict):
    change, path, message = BROKEN_DOCUMENTS[case]
    with pytest.raises(ManifestError) as caught:
        validate_manifest(_broken(rayservice, change), schema=HAVE_CRDS)
    assert any(path in p.path and message in p.message for p in caught.value.problems), str(caught.value)
    assert path in str(caught.value)


@needs_crds
def test_an_integer_where_int_or_string_is_allowed_passes(rayservice: dict):
    validate_manifest(_broken(rayservice, lambda d: _container_of(d)["resources"]["limits"].update(cpu=64)))


def test_missing_crds_are_reported_with_the_variable_to_set(monkeypatch, tmp_path: Path, rayservice: dict):
    monkeypatch.setenv("COE_KUBERAY_CRDS", str(tmp_path))
    with pytest.raises(ManifestError, match="COE_KUBERAY_CRDS"):
        validate_manifest(rayservice)


# --------------------------------------------------------------------------- broken across documents


def _broken_folder(tmp_path: Path, name: str, change: Callable[[dict], None]) -> Path:
    """A copy of k8s/ with one manifest changed, for the checks that need several documents."""
    folder = tmp_path / "k8s"
    shutil.copytree(K8S, folder, ignore=shutil.ignore_patterns("*.md"))
    doc = _load(name)
    change(doc)
    (folder / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def _configmap_section(section: str, key: str, value: object) -> Callable[[dict], None]:
    def change(doc: dict) -> None:
        config = yaml.safe_load(doc["data"]["cluster.yaml"])
        config.setdefault(section, {})[key] = value
        doc["data"]["cluster.yaml"] = yaml.safe_dump(config)

    return change


def _configmap_topology(key: str, value: object) -> Callable[[dict], None]:
    return _configmap_section("topology", key, value)


SOCKETS_4 = r'"{\"coe_socket\": 4}"'
BROKEN_FOLDERS = {
    "coe_socket is not sockets_per_node": (
        "rayservice.yaml", lambda d: _worker_of(d)["rayStartParams"].update(resources=SOCKETS_4),
        "workerGroupSpecs[0].rayStartParams.resources", "coe_socket is 4"),
    "resources not quoted for ray start": (
        "rayservice.yaml", lambda d: _worker_of(d)["rayStartParams"].update(resources='{"coe_socket": 8}'),
        "workerGroupSpecs[0].rayStartParams.resources", "wrapped in double quotes"),
    "GPUs per pod are not sockets_per_node": (
        "configmap.yaml", _configmap_topology("sockets_per_node", 4),
        "containers[0].resources.limits", "8 GPUs per pod"),
    "worker pods are not nodes": (
        "configmap.yaml", _configmap_topology("nodes", 3),
        "rayClusterConfig.workerGroupSpecs", "topology.nodes is 3"),
    "object store smaller than DDR": (
        "configmap.yaml", _configmap_topology("ddr_per_node", "1TiB"),
        'rayStartParams["object-store-memory"]', "below ddr_per_node"),
    "cluster config does not load": (
        "configmap.yaml", _configmap_topology("hbm_per_socket", "lots"),
        'data["cluster.yaml"].topology.hbm_per_socket', "cannot read 'lots' as a size"),
    "config not mounted on a worker": (
        "rayservice.yaml", lambda d: _container_of(d)["volumeMounts"].pop(0),
        "workerGroupSpecs[0].template.spec.containers[0].volumeMounts", "no ConfigMap volume provides"),
    "token auth off": (
        "rayservice.yaml", lambda d: d["spec"]["rayClusterConfig"].pop("authOptions"),
        "spec.rayClusterConfig.authOptions.mode", "must be 'token'"),
    "dashboard published": (
        "raycluster.yaml", lambda d: d["spec"]["headGroupSpec"].update(serviceType="LoadBalancer"),
        "spec.headGroupSpec.serviceType", "keep it ClusterIP"),
    "serveConfigV2 disagrees with the config": (
        "rayservice.yaml", _set_serve("port: 9000", "port: 9001"),
        "spec.serveConfigV2.grpc_options.port", "the cluster config says 9000"),
    "API key as a literal": (
        "rayservice.yaml",
        lambda d: _container_of(d)["env"].__setitem__(1, {"name": "COE_API_KEY", "value": "sk-live-123"}),
        "workerGroupSpecs[0].template.spec.containers[0].env[1]",
        "never a literal value",
    ),
    "API key missing on a worker": (
        "raycluster.yaml",
        lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"].pop(1),
        "spec.workerGroupSpecs[0].template.spec.containers[0].env",
        "must set COE_API_KEY from a Secret",
    ),
    "API key from an unknown Secret": (
        "rayservice.yaml",
        lambda d: _container_of(d)["env"][1]["valueFrom"]["secretKeyRef"].update(name="nope"),
        "env[1].valueFrom.secretKeyRef.name",
        "no Secret named 'nope'",
    ),
    "cluster config runs open": (
        "configmap.yaml",
        _configmap_section("security", "require_api_key", False),
        'data["cluster.yaml"].security.require_api_key',
        "must be true on a cluster",
    ),
    "a key committed in the Secret": (
        "secret.yaml",
        lambda d: d["stringData"].update(COE_API_KEY="sk-live-123"),
        "stringData.COE_API_KEY",
        "never commit a key",
    ),
    "serving workers without a gRPC readiness probe": (
        "rayservice.yaml", lambda d: _container_of(d).pop("readinessProbe"),
        "workerGroupSpecs[0].template.spec.containers[0].readinessProbe", "needs a gRPC readiness probe"),
    "app-gated probe on the head": (
        "rayservice.yaml",
        lambda d: d["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
            readinessProbe={"grpc": {"port": 9000}}
        ),
        "headGroupSpec.template.spec.containers[0].readinessProbe", "once the head pod is Ready"),
    "app-gated probe on the RayJob's cluster": (
        "raycluster.yaml",
        lambda d: d["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].update(
            readinessProbe={"grpc": {"port": 9000}}
        ),
        "spec.workerGroupSpecs[0].template.spec.containers[0].readinessProbe", "a RayJob waits"),
    "probes without the health servicer": (
        "rayservice.yaml",
        _set_serve("    - grpc_health.v1.health_pb2_grpc.add_HealthServicer_to_server\n", ""),
        "spec.serveConfigV2.grpc_options.grpc_servicer_functions", "UNIMPLEMENTED"),
    "metrics scraped on every worker": (
        "rayservice.yaml",
        lambda d: _worker_of(d)["template"]["metadata"].update(annotations={"prometheus.io/scrape": "true"}),
        "workerGroupSpecs[0].template.metadata.annotations", "scrape the head pod only"),
    "rayjob selects no cluster": (
        "rayjob.yaml", lambda d: d["spec"].update(clusterSelector={"ray.io/cluster": "nope"}),
        'spec.clusterSelector["ray.io/cluster"]', "no RayCluster named 'nope'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_FOLDERS))
def test_a_manifest_folder_that_disagrees_with_its_config_is_rejected(case: str, tmp_path: Path):
    name, change, path, message = BROKEN_FOLDERS[case]
    with pytest.raises(ManifestError) as caught:
        validate_paths([_broken_folder(tmp_path, name, change)], schema=HAVE_CRDS)
    assert any(path in p.path and message in p.message for p in caught.value.problems), str(caught.value)


@needs_crds
def test_cli_exits_non_zero_and_names_the_field(tmp_path: Path, capsys):
    from cluster.manifests import main

    assert main([str(K8S)]) == 0
    folder = _broken_folder(tmp_path, "rayjob.yaml", lambda d: d["spec"].update(backoffLimit="never"))
    assert main([str(folder)]) == 1
    assert "spec.backoffLimit" in capsys.readouterr().err


def test_cli_without_crds_names_the_variable_and_no_crds_runs_the_rest(monkeypatch, tmp_path: Path, capsys):
    from cluster.manifests import main

    monkeypatch.setenv(CRD_DIR_ENV, str(tmp_path / "none"))
    assert main([str(K8S)]) == 1
    assert CRD_DIR_ENV in capsys.readouterr().err
    assert main(["--no-crds", str(K8S)]) == 0
    folder = _broken_folder(
        tmp_path, "rayjob.yaml", lambda d: d["spec"].update(clusterSelector={"ray.io/cluster": "x"})
    )
    assert main(["--no-crds", str(folder)]) == 1
    assert "no RayCluster named 'x'" in capsys.readouterr().err
